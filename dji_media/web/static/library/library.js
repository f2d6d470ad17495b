// The media library page: plain script, no framework and no build step, so the package serves it
// as it is. Every value from the server is shown through textContent (never parsed as HTML).
"use strict";

(function () {
  // Files per "load more"; ?page_size=N in the page's address (1..200, the API's limit) changes it.
  const asked = Number(new URLSearchParams(window.location.search).get("page_size"));
  const PAGE_SIZE = Number.isInteger(asked) && asked >= 1 && asked <= 200 ? asked : 24;
  // The token lives in this tab only: sessionStorage is not shared with other tabs and is gone
  // when the tab closes, unlike localStorage or a cookie.
  const store = window.sessionStorage;
  let token = store.getItem("dji_media.token");
  let workspace = store.getItem("dji_media.workspace");
  let cursor = null;
  let shown = 0;
  let generation = 0;      // a newer search drops the answers of an older one
  let selected = null;     // the File shown in the details
  let downloadFetchedAt = 0;

  const $ = (id) => document.getElementById(id);

  class ApiError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }

  // Relative to the page (…/media/library/), so a host's prefix carries over to the API.
  function apiUrl(path) {
    return "../api/v1/workspaces/" + encodeURIComponent(workspace) + "/library/" + path;
  }

  async function api(path, method) {
    let response;
    try {
      response = await fetch(apiUrl(path), {method: method || "GET", headers: {"X-Auth-Token": token},
                                             cache: "no-store", credentials: "omit"});
    } catch (exc) {
      throw new ApiError(0, "The server cannot be reached (" + exc.message + ").");
    }
    let body = null;
    try { body = await response.json(); } catch (exc) { /* not an envelope: use the status */ }
    if (response.status === 401) {
      askForToken("The server did not accept the token. Enter it again.");
      throw new ApiError(401, "unauthorized");
    }
    if (!response.ok || !body || body.code !== 0) {
      const why = body && body.message ? body.message : "HTTP " + response.status;
      throw new ApiError(response.status, why);
    }
    return body.data;
  }

  function say(text, kind) {
    const box = $("message");
    box.textContent = text;
    box.className = kind || "";
    box.hidden = !text;
  }

  // One message for a failed call: a 401 has already asked for the token again; a 403 on reading
  // means the token is valid but not for browsing this workspace (Pilot 2's upload-only token, say).
  function failed(what, exc) {
    if (exc.status === 401) return;
    if (exc.status === 403 && what !== "delete") {
      say("This token may not see the library of workspace " + workspace + " (" + exc.message + ").");
    } else {
      say("Could not " + what + ": " + exc.message);
    }
  }

  function askForToken(why) {
    store.removeItem("dji_media.token");
    token = null;
    $("library").hidden = true;
    $("sign-out").hidden = true;
    $("who").textContent = "";
    $("login").hidden = false;
    if (workspace) $("login-workspace").value = workspace;
    $("login-token").value = "";
    say(why || "", why ? "" : undefined);
    $(workspace ? "login-token" : "login-workspace").focus();
  }

  function showLibrary() {
    $("login").hidden = true;
    $("library").hidden = false;
    $("sign-out").hidden = false;
    $("who").textContent = "Workspace " + workspace;
    search();
    loadMissions();
  }

  // --- formatting -------------------------------------------------------------------------
  function when(iso) {
    if (!iso) return "–";
    const d = new Date(iso);
    return isNaN(d) ? iso : d.toLocaleString();
  }

  function sizeText(n) {
    if (n === null || n === undefined) return "–";
    const units = ["B", "KB", "MB", "GB", "TB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i ? n.toFixed(1) : n) + " " + units[i];
  }

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // --- the gallery ------------------------------------------------------------------------
  function dayStart(value, endOfDay) {
    // The operator picks days in their own time zone; the API takes instants.
    const d = new Date(value + (endOfDay ? "T23:59:59" : "T00:00:00"));
    return d.toISOString().replace(/\.\d{3}Z$/, "Z");
  }

  function filterQuery() {
    const params = new URLSearchParams();
    const fields = {mission: "f-mission", kind: "f-kind", sn: "f-sn", q: "f-q"};
    for (const [name, id] of Object.entries(fields)) {
      const value = $(id).value.trim();
      if (value) params.set(name, value);
    }
    if ($("f-from").value) params.set("captured_from", dayStart($("f-from").value, false));
    if ($("f-to").value) params.set("captured_to", dayStart($("f-to").value, true));
    return params;
  }

  async function search() {
    generation++;
    cursor = null;
    shown = 0;
    $("gallery").replaceChildren();
    $("count").textContent = "";
    closeDetails();
    await loadPage(true);
  }

  async function loadPage(first) {
    const mine = generation;
    const params = filterQuery();
    params.set("limit", String(PAGE_SIZE));
    params.set("order", "newest");
    if (first) params.set("count", "true");
    if (cursor) params.set("cursor", cursor);
    $("more").disabled = true;
    let data;
    try {
      data = await api("files?" + params.toString());
    } catch (exc) {
      failed("load the files", exc);
      return;
    } finally {
      $("more").disabled = false;
    }
    if (mine !== generation) return;
    for (const file of data.files) $("gallery").append(tile(file));
    shown += data.files.length;
    cursor = data.next_cursor;
    if (data.total !== undefined && data.total !== null) $("count").dataset.total = data.total;
    updateCount();
    $("more").hidden = !cursor;
    $("empty").hidden = shown > 0;
  }

  function updateCount() {
    const total = $("count").dataset.total;
    $("count").textContent = total !== undefined ? "(" + shown + " of " + total + ")" : "(" + shown + ")";
  }

  function tile(file) {
    const li = el("li");
    li.dataset.id = file.id;
    li.dataset.kind = file.kind;
    li.title = file.path ? file.path + "/" + file.name : file.name;
    const thumb = el("div", "thumb");
    if (file.kind === "photo") {
      thumb.textContent = "…";
      preview(file.id).then((url) => {
        const img = el("img");
        img.alt = file.name;
        img.onerror = () => { thumb.replaceChildren(); thumb.textContent = "PHOTO"; };
        img.src = url;
        thumb.replaceChildren(img);
      }, () => { thumb.textContent = "PHOTO"; });
    } else {
      // No frame of a video is made here: a labelled placeholder instead.
      thumb.textContent = file.kind === "video" ? "▶ VIDEO" : "FILE";
    }
    const caption = el("div", "caption");
    // A long name is cut at its start (library.css): DJI's names differ at the end (the shot's
    // number and lens, "_0012_W.JPG"), so that is the part a tile must show.
    const name = el("span", "name");
    name.append(el("bdi", "", file.name));
    caption.append(name, el("span", "when", when(file.created_time || file.uploaded_at)));
    li.append(thumb, caption);
    li.addEventListener("click", () => openDetails(file.id));
    return li;
  }

  async function preview(id) {
    const data = await api("files/" + encodeURIComponent(id) + "/download?inline=true");
    return data.url;
  }

  // --- details ------------------------------------------------------------------------------
  function field(list, name, value) {
    list.append(el("dt", "", name), el("dd", "", value === null || value === undefined || value === "" ? "–" : String(value)));
  }

  async function openDetails(id) {
    let file;
    try {
      file = await api("files/" + encodeURIComponent(id));
    } catch (exc) {
      failed("open the file", exc);
      return;
    }
    selected = file;
    for (const li of $("gallery").children) li.classList.toggle("selected", li.dataset.id === file.id);
    $("d-name").textContent = file.name;
    const list = $("d-fields");
    list.replaceChildren();
    field(list, "Kind", file.kind + (file.is_original ? " (original)" : ""));
    field(list, "Path", file.path);
    field(list, "Captured", file.created_time_text || when(file.created_time));
    field(list, "Uploaded", when(file.uploaded_at));
    field(list, "Verified", file.verified_at ? when(file.verified_at) : "not yet");
    field(list, "Size", sizeText(file.size));
    const pos = file.shoot_position;
    field(list, "Position", pos ? pos.lat.toFixed(6) + ", " + pos.lng.toFixed(6) : null);
    field(list, "Altitude (abs / rel)", (file.absolute_altitude ?? "–") + " m / " + (file.relative_altitude ?? "–") + " m");
    field(list, "Gimbal yaw", file.gimbal_yaw_degree === null || file.gimbal_yaw_degree === undefined ? null : file.gimbal_yaw_degree + "°");
    field(list, "Mission", file.mission);
    field(list, "Aircraft SN", file.sn);
    field(list, "Drone / payload", (file.drone_model_key || "–") + " / " + (file.payload_name || file.payload_model_key || "–"));
    field(list, "Object key", file.object_key);
    field(list, "Fingerprint", file.fingerprint);
    field(list, "File id", file.id);
    const img = $("d-preview");
    img.hidden = true;
    img.removeAttribute("src");
    if (file.kind === "photo") {
      preview(file.id).then((url) => {
        if (selected && selected.id === file.id) { img.alt = file.name; img.src = url; img.hidden = false; }
      }, () => {});
    }
    $("d-download").removeAttribute("href");
    refreshDownload(file.id);
    $("details").hidden = false;
  }

  async function refreshDownload(id) {
    try {
      const data = await api("files/" + encodeURIComponent(id) + "/download");
      if (selected && selected.id === id) {
        $("d-download").href = data.url;
        downloadFetchedAt = Date.now();
      }
    } catch (exc) {
      failed("get a download link", exc);
    }
  }

  function closeDetails() {
    selected = null;
    $("details").hidden = true;
    for (const li of $("gallery").children) li.classList.remove("selected");
  }

  async function deleteSelected() {
    if (!selected) return;
    const file = selected;
    if (!window.confirm("Delete " + file.name + "?\nIts record and its object in storage are removed; this cannot be undone.")) return;
    try {
      await api("files/" + encodeURIComponent(file.id), "DELETE");
    } catch (exc) {
      if (exc.status === 403) {
        say("This token may not delete files (it lacks the delete scope): " + file.name + " was not deleted.");
      } else if (exc.status !== 401) {
        say("Could not delete " + file.name + ": " + exc.message);
      }
      return;
    }
    for (const li of Array.from($("gallery").children)) if (li.dataset.id === file.id) li.remove();
    shown = Math.max(0, shown - 1);
    if ($("count").dataset.total) $("count").dataset.total = Math.max(0, Number($("count").dataset.total) - 1);
    updateCount();
    $("empty").hidden = shown > 0;
    closeDetails();
    say("Deleted " + file.name + ".", "info");
    loadMissions();
  }

  // --- missions -------------------------------------------------------------------------------
  async function loadMissions() {
    const missions = [];
    let next = null;
    try {
      do {
        const data = await api("missions?limit=200" + (next ? "&cursor=" + encodeURIComponent(next) : ""));
        missions.push(...data.missions);
        next = data.next_cursor;
      } while (next && missions.length < 1000);
    } catch (exc) {
      failed("load the missions", exc);
      return;
    }
    const body = $("missions").tBodies[0];
    body.replaceChildren();
    const select = $("f-mission");
    const chosen = select.value;
    select.replaceChildren(new Option("all", ""));
    for (const m of missions) {
      const row = el("tr");
      row.dataset.mission = m.mission;
      const state = el("span", "state state-" + m.state, m.state.replace("_", " "));
      const cells = [m.mission, state, m.recorded_count,
                     (m.reported_uploaded_count ?? "–") + " / " + (m.reported_file_count ?? "–"),
                     m.expected_file_count ?? "–", when(m.last_upload)];
      for (const value of cells) {
        const td = el("td");
        if (value instanceof Node) td.append(value); else td.textContent = String(value);
        row.append(td);
      }
      body.append(row);
      select.append(new Option(m.mission, m.mission));
    }
    select.value = chosen;
    if (select.value !== chosen) select.value = "";
  }

  // --- wiring ------------------------------------------------------------------------------------
  document.addEventListener("DOMContentLoaded", () => {
    $("login-form").addEventListener("submit", (event) => {
      event.preventDefault();
      workspace = $("login-workspace").value.trim();
      token = $("login-token").value.trim();
      if (!workspace || !token) return;
      store.setItem("dji_media.workspace", workspace);
      store.setItem("dji_media.token", token);
      say("");
      showLibrary();
    });
    $("sign-out").addEventListener("click", () => askForToken(""));
    $("filters").addEventListener("submit", (event) => { event.preventDefault(); say(""); search(); });
    $("f-reset").addEventListener("click", () => { $("filters").reset(); say(""); search(); });
    $("more").addEventListener("click", () => loadPage(false));
    $("d-close").addEventListener("click", closeDetails);
    $("d-delete").addEventListener("click", deleteSelected);
    $("d-download").addEventListener("click", (event) => {
      // Presigned links last 15 minutes: an older one is asked for again first.
      if (selected && Date.now() - downloadFetchedAt > 10 * 60 * 1000) {
        event.preventDefault();
        refreshDownload(selected.id).then(() => { window.location.href = $("d-download").href; });
      }
    });
    if (token && workspace) showLibrary(); else askForToken("");
  });
})();
