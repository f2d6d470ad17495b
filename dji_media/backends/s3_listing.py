"""Answering "are these objects there?" for many keys with listings instead of one HEAD each.

A tiny-fingerprints request asks about hundreds of objects at once, and a mission's files sit
side by side under one key prefix ("directory"). One ListObjectsV2 page names up to 1,000 of
them for about the cost of one HEAD, so the keys of a directory are answered by listing the
part of it between the smallest and the largest key. The scan is bounded: a directory much
larger than the request is not read to the end, and the keys it did not reach are left to HEAD.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Set, Tuple

from minio import Minio

# Fewer keys than this in one directory: HEAD them (a listing would cost as much).
LIST_THRESHOLD = 8
# Objects a listing may read per key it must answer (plus one page) before it stops.
SCAN_PER_KEY = 4
PAGE = 1000


def group_by_directory(keys: Sequence[str]) -> Tuple[Dict[str, List[str]], List[str]]:
    """(directory -> its keys, for directories worth listing), and the keys to HEAD."""
    groups: Dict[str, List[str]] = {}
    for key in keys:
        groups.setdefault(key[:key.rfind("/") + 1], []).append(key)
    listed = {d: members for d, members in groups.items() if len(members) >= LIST_THRESHOLD}
    single = [k for d, members in groups.items() if d not in listed for k in members]
    return listed, single


def list_directory(client: Minio, bucket: str, directory: str,
                   keys: Sequence[str]) -> Tuple[Dict[str, bool], List[str]]:
    """Answers for the keys of one directory from a listing, and the keys left unanswered.

    A key inside the listed range but absent from it is gone, as a HEAD 404 would say (the
    listing proves the bucket exists, so this cannot be a missing bucket). S3 lists in UTF-8
    byte order, which is the order of Python's string comparison.
    """
    wanted = sorted(set(keys))
    low, high = wanted[0], wanted[-1]
    # Start just before the smallest key: "start after" its name without the last character.
    start_after: Optional[str] = low[:-1] if len(low) - 1 > len(directory) else None
    budget = SCAN_PER_KEY * len(wanted) + PAGE
    seen: Set[str] = set()
    complete_to = high  # the listing is complete up to this name (included)
    for count, obj in enumerate(client.list_objects(bucket, prefix=directory, start_after=start_after)):
        name = obj.object_name
        if name > high:
            break
        if count >= budget:  # a directory far larger than the request: HEAD the rest
            complete_to = max(seen, default="")
            break
        seen.add(name)
    answers = {k: k in seen for k in wanted if k <= complete_to}
    return answers, [k for k in wanted if k > complete_to]
