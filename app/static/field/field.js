/* Makazi field app: record structures, households and walks offline; sync when in signal.
 *
 * Everything a person records goes first into an outbox in IndexedDB (one item per
 * change, each with its own Idempotency-Key made when it is saved), so a reload, a
 * crash or a refused sign-in loses nothing.  `Sync` sends the items in order, one at
 * a time; an item leaves the outbox only when the server has answered it, and a
 * retry of an item whose answer was lost carries the same key, so the server
 * replays its first answer instead of writing twice.  An edit refused with 412
 * (changed by someone else meanwhile) becomes a conflict shown side by side, and is
 * reported to the server (POST /conflicts) for reviewers; the person chooses
 * `Keep mine` (a new edit on top of theirs) or `Keep theirs`.
 *
 * A settlement downloaded for offline use (its boundary, structures and facilities,
 * GET /field/settlements/{id}/package) is kept in IndexedDB and drawn from there;
 * so is its map, the vector tiles of zooms 14-18 as one PMTiles archive
 * (GET /field/settlements/{id}/tiles.pmtiles), kept whole as a Blob and read by the
 * PMTiles reader through a File source (each tile is a slice of the Blob: no network,
 * no service worker involved).  The service worker (/field/sw.js) keeps the app's own
 * files.  Household personal fields (head_name, phone) are stored only in their
 * outbox item, which is deleted as soon as the server has the household; a
 * structure's households listed from the server are shown and never stored.
 */
(function () {
  "use strict";

  var DB_NAME = "makazi-field";
  var TOKEN_KEY = "makazi-field-token";
  var SELECTED_KEY = "makazi-field-settlement";
  var SETTLEMENTS_KEY = "makazi-field-settlements";
  var USE_COLOURS = {
    residential: "#c9a26b", business: "#3b6ea8", mixed: "#8c6bb1", religious: "#5c940d",
    school: "#f59f00", clinic: "#e8590c", toilet: "#0c8599", water_point: "#22b8cf",
    other: "#868e96"
  };
  var FIELDS = ["structure_number", "use", "wall_material", "roof_material", "storeys"];
  var USES = Object.keys(USE_COLOURS);
  var LABELS = { structure_number: "Structure number", use: "Use", wall_material: "Wall material",
    roof_material: "Roof material", storeys: "Storeys", position_accuracy_m: "GPS accuracy (m)" };
  var ROLES = ["viewer", "mapper", "enumerator", "planner", "admin"];

  var $ = function (id) { return document.getElementById(id); };
  var state = {
    db: null,
    config: { max_accuracy_m: 20, uses: USES },
    role: null,
    pkg: null,          // the selected settlement's package (from IndexedDB)
    tiles: null,        // its tile archive {id, etag, bytes, blob} (from IndexedDB)
    protocol: null,     // the PMTiles protocol registered with MapLibre
    editing: null,      // the feature being edited, or null for a new structure
    moving: false,      // whether the edit moves it (its new place is state.position)
    position: null,     // {lon, lat, accuracy} chosen for a new structure
    picking: false,
    walk: null,         // {started, points: [...]} while walking
    watch: null,
    syncing: false,
    map: null
  };

  // ---------------------------------------------------------------- IndexedDB

  function openDb() {
    return new Promise(function (resolve, reject) {
      var request = indexedDB.open(DB_NAME, 2);
      request.onupgradeneeded = function (event) {
        var db = request.result;
        if (event.oldVersion < 1) {
          db.createObjectStore("outbox", { keyPath: "seq", autoIncrement: true });
          db.createObjectStore("packages", { keyPath: "id" });
          db.createObjectStore("conflicts", { keyPath: "id" });
          db.createObjectStore("meta");
        }
        // version 2: a settlement's tile archive, {id, etag, bytes, blob}
        if (event.oldVersion < 2) { db.createObjectStore("tiles", { keyPath: "id" }); }
      };
      request.onsuccess = function () { resolve(request.result); };
      request.onerror = function () { reject(request.error); };
    });
  }

  /** Run fn(store...) in one transaction; resolves with fn's request result when done. */
  function tx(stores, mode, fn) {
    return new Promise(function (resolve, reject) {
      var t = state.db.transaction(stores, mode);
      var result;
      var handles = stores.map(function (name) { return t.objectStore(name); });
      var request = fn.apply(null, handles);
      if (request && "onsuccess" in request) {
        request.onsuccess = function () { result = request.result; };
      }
      t.oncomplete = function () { resolve(result); };
      t.onerror = function () { reject(t.error); };
      t.onabort = function () { reject(t.error || new Error("storage transaction aborted")); };
    });
  }
  function getAll(store) { return tx([store], "readonly", function (s) { return s.getAll(); }); }
  function get(store, key) { return tx([store], "readonly", function (s) { return s.get(key); }); }
  function put(store, value, key) {
    return tx([store], "readwrite", function (s) { return key === undefined ? s.put(value) : s.put(value, key); });
  }
  function del(store, key) { return tx([store], "readwrite", function (s) { return s.delete(key); }); }

  function uuid() {
    if (self.crypto && crypto.randomUUID) { return crypto.randomUUID(); }
    var b = crypto.getRandomValues(new Uint8Array(16));
    return Array.prototype.map.call(b, function (x) { return (x + 256).toString(16).slice(1); }).join("");
  }

  // ---------------------------------------------------------------- messages

  function say(id, text, kind) {
    var el = $(id);
    el.textContent = text || "";
    el.className = kind || (el.id === "walk-status" || el.id === "sync-status" ? "muted" : "");
  }
  /** Why a request failed, in words: a fetch that never reached the server says so. */
  function reason(error) {
    if (error instanceof TypeError && /fetch|network|load failed/i.test(error.message)) {
      return navigator.onLine ? "the server could not be reached" : "no network";
    }
    return (error && error.message) || "no network";
  }
  function alertMessage(text) {
    var box = $("message");
    box.textContent = text;
    box.hidden = !text;
    if (text) { setTimeout(function () { if (box.textContent === text) { box.hidden = true; } }, 8000); }
  }
  function showNet() {
    var on = navigator.onLine;
    $("net").textContent = on ? "online" : "offline";
    $("net").className = "pill" + (on ? "" : " offline");
  }
  function formatBytes(n) {
    if (n < 1024) { return n + " B"; }
    if (n < 1024 * 1024) { return (n / 1024).toFixed(0) + " kB"; }
    return (n / 1024 / 1024).toFixed(1) + " MB";
  }

  // ---------------------------------------------------------------- the server

  function token() { return localStorage.getItem(TOKEN_KEY); }

  /** fetch with the token; resolves with the Response (any status), rejects on no network. */
  function call(method, path, options) {
    options = options || {};
    var headers = Object.assign({ Accept: "application/json" }, options.headers || {});
    if (token()) { headers.Authorization = "Bearer " + token(); }
    return fetch(path, { method: method, headers: headers, body: options.body, cache: "no-store" });
  }

  function problem(response) {
    return response.text().then(function (body) {
      try {
        var doc = JSON.parse(body);
        return doc.detail || doc.title || response.statusText;
      } catch (e) {
        return response.status + " " + response.statusText;
      }
    });
  }

  // ---------------------------------------------------------------- sign in

  function showSignedIn() {
    var signedIn = Boolean(token());
    $("signin").hidden = signedIn;
    $("signed-in").hidden = !signedIn;
    $("who").textContent = signedIn && state.role ? state.role : "";
    $("signed-as").textContent = signedIn ? "Signed in" + (state.role ? " as " + state.role : "") + ". " : "";
    $("households-part").hidden = !(state.editing && atLeast("enumerator"));
  }
  function atLeast(role) { return state.role !== null && ROLES.indexOf(state.role) >= ROLES.indexOf(role); }

  function checkSignIn() {
    // offline: keep the remembered role (asking would only log a failed request)
    if (!token() || !navigator.onLine) { return Promise.resolve(); }
    return call("GET", "/field/me").then(function (response) {
      if (response.ok) {
        return response.json().then(function (me) {
          state.role = me.role;
          localStorage.setItem(TOKEN_KEY + "-role", me.role);
          showSignedIn();
        });
      }
      if (response.status === 401) {
        // the token was refused: forget it, keep every queued item
        localStorage.removeItem(TOKEN_KEY);
        state.role = null;
        showSignedIn();
        say("signin-status", "That token was refused. Your saved work is kept; sign in again.", "error");
      }
    }, function (error) {
      // the server is out of reach: keep the token and the remembered role, and say so
      showSignedIn();
      say("signin-status", "Not checked: " + reason(error) + ". Your token is kept; Sync checks it later.", "warn");
    });
  }

  function onSignIn(event) {
    event.preventDefault();
    var value = $("token").value.trim();
    if (!value) { say("signin-status", "Paste your token first.", "error"); return; }
    localStorage.setItem(TOKEN_KEY, value);
    $("token").value = "";
    say("signin-status", "");
    if (!navigator.onLine) {
      showSignedIn();
      say("signin-status", "Saved; it will be checked when you are online.", "muted");
      return;
    }
    checkSignIn().then(function () {
      if (token() && state.role) { say("sync-status", "Signed in as " + state.role + "."); refreshCount(); }
    });
  }

  function onSignOut() {
    localStorage.removeItem(TOKEN_KEY);
    localStorage.removeItem(TOKEN_KEY + "-role");
    state.role = null;
    showSignedIn();
  }

  // ---------------------------------------------------------------- settlements and packages

  function loadSettlementList() {
    var remembered = JSON.parse(localStorage.getItem(SETTLEMENTS_KEY) || "[]");
    fillSettlements(remembered);
    if (!navigator.onLine) { return Promise.resolve(); }
    return call("GET", "/collections/settlements/items?limit=1000&skipGeometry=true")
      .then(function (response) { return response.ok ? response.json() : null; })
      .then(function (fc) {
        if (!fc) { return; }
        var list = fc.features.map(function (f) { return { id: f.id, name: f.properties.name }; });
        list.sort(function (a, b) { return a.name.localeCompare(b.name); });
        localStorage.setItem(SETTLEMENTS_KEY, JSON.stringify(list));
        fillSettlements(list);
      }, function () { /* offline: the remembered list */ });
  }

  function fillSettlements(list) {
    var select = $("settlement");
    var chosen = select.value || localStorage.getItem(SELECTED_KEY) || "";
    while (select.options.length > 1) { select.remove(1); }
    list.forEach(function (s) {
      var option = document.createElement("option");
      option.value = String(s.id);
      option.textContent = s.name;
      select.appendChild(option);
    });
    if (chosen && list.some(function (s) { return String(s.id) === chosen; })) { select.value = chosen; }
  }

  function onSettlementChange() {
    var id = $("settlement").value;
    localStorage.setItem(SELECTED_KEY, id);
    say("offline-status", "");
    say("package-size", "");
    return showPackage(id).then(function () {
      if (!id || !navigator.onLine) { return; }
      return call("GET", "/field/settlements/" + id).then(function (response) {
        if (!response.ok) { return; }
        return response.json().then(function (info) {
          var current = state.pkg && state.pkg.etag === info.etag &&
            state.tiles && state.tiles.etag === info.tiles_etag;
          say("package-size", "Download size: " + formatBytes(info.total_bytes) + " (map " +
            formatBytes(info.tiles_bytes) + ", " + info.structures + " structures, " +
            info.facilities + " facilities)" + (current ? "; the copy on this phone is current" : ""), "muted");
        });
      }, function () { /* offline */ });
    });
  }

  function showPackage(id) {
    if (!id) { state.pkg = null; showTiles(null); $("free").hidden = true; draw(); return Promise.resolve(); }
    return Promise.all([get("packages", Number(id)), get("tiles", Number(id))]).then(function (found) {
      var pkg = found[0];
      showTiles(found[1] || null);
      state.pkg = pkg || null;
      $("free").hidden = !pkg;
      if (pkg) {
        readyOffline();
        fit(pkg.settlement.bbox);
      }
      draw();
    });
  }

  function readyOffline() {
    var sw = "serviceWorker" in navigator ? navigator.serviceWorker.ready : Promise.resolve(null);
    var timeout = new Promise(function (resolve) { setTimeout(resolve, 15000, null); });
    return Promise.race([sw, timeout]).then(function (registration) {
      if (!state.pkg) { return; }
      if (!registration) {
        say("offline-status", "Data saved, but this browser cannot keep the app offline.", "warn");
        return;
      }
      return storageUse().then(function (use) {
        var map = state.tiles ? ", map " + formatBytes(state.tiles.bytes) : ", no map tiles";
        say("offline-status", "Ready offline: " + state.pkg.settlement.name + ", " +
          state.pkg.structures.features.length + " structures" + map + use, "good");
      });
    });
  }

  function storageUse() {
    if (!(navigator.storage && navigator.storage.estimate)) { return Promise.resolve(""); }
    return navigator.storage.estimate().then(function (e) {
      return " (" + formatBytes(e.usage || 0) + " used on this phone)";
    }, function () { return ""; });
  }

  /**
   * The body of ``response`` as a Blob, saying in ``offline-status`` how much has come so far
   * ("Downloading the map: 1.2 MB of 3.4 MB"): on a slow line a download takes minutes.
   */
  function blobShowingProgress(response, what) {
    if (!(response.body && response.body.getReader)) { return response.blob(); }
    // a compressed answer's Content-Length counts other bytes than the ones read here
    var total = response.headers.get("Content-Encoding") ? 0 : Number(response.headers.get("Content-Length")) || 0;
    var reader = response.body.getReader();
    var parts = [];
    var got = 0;
    function next() {
      return reader.read().then(function (step) {
        if (step.done) { return new Blob(parts); }
        parts.push(step.value);
        got += step.value.length;
        say("offline-status", "Downloading " + what + ": " + formatBytes(got) +
          (total ? " of " + formatBytes(total) : "") + "…", "muted");
        return next();
      });
    }
    return next();
  }

  function onDownload() {
    var id = $("settlement").value;
    if (!id) { say("offline-status", "Choose a settlement first.", "error"); return; }
    if (!navigator.onLine) { say("offline-status", "You are offline: download when in signal.", "error"); return; }
    var started = performance.now();
    say("offline-status", "Downloading…", "muted");
    $("download").disabled = true;
    var etag = null;
    var bytes = 0;
    var tiles = null;
    // the map first (the larger part): a failure leaves the phone's current copy whole
    call("GET", "/field/settlements/" + id + "/tiles.pmtiles").then(function (response) {
      if (!response.ok) { return problem(response).then(function (d) { throw new Error(d); }); }
      var tag = response.headers.get("ETag");
      return blobShowingProgress(response, "the map").then(function (blob) {
        tiles = { id: Number(id), etag: tag, bytes: blob.size, blob: blob, downloaded_at: new Date().toISOString() };
      });
    }).then(function () {
      return call("GET", "/field/settlements/" + id + "/package");
    }).then(function (response) {
      if (!response.ok) { return problem(response).then(function (d) { throw new Error(d); }); }
      etag = response.headers.get("ETag");
      return blobShowingProgress(response, "the structures").then(function (blob) { return blob.text(); });
    }).then(function (body) {
      bytes = body.length;
      var pkg = JSON.parse(body);
      pkg.id = Number(id);
      pkg.etag = etag;
      pkg.bytes = bytes;
      pkg.downloaded_at = new Date().toISOString();
      return withPending(pkg).then(function () {
        return tx(["packages", "tiles"], "readwrite", function (packages, store) { store.put(tiles); return packages.put(pkg); });
      }).then(function () { return pkg; });
    }).then(function (pkg) {
      if (navigator.storage && navigator.storage.persist) { navigator.storage.persist(); }
      // the app's own files: make sure the service worker holds them
      return (window.caches ? caches.open("makazi-field-shell-v2").then(function (cache) {
        return cache.match("/field/field.js").then(function (hit) { return hit ? null : cache.add("/field/field.js"); });
      }) : Promise.resolve()).catch(function () { return null; }).then(function () { return pkg; });
    }).then(function (pkg) {
      state.pkg = pkg;
      showTiles(tiles);
      $("free").hidden = false;
      fit(pkg.settlement.bbox);
      draw();
      return readyOffline();
    }).then(function () {
      window.makaziField.lastDownload = { bytes: bytes + tiles.bytes, features_bytes: bytes,
        tiles_bytes: tiles.bytes, ms: performance.now() - started };
    }).catch(function (error) {
      say("offline-status", "Download failed: " + reason(error) + ".", "error");
    }).then(function () { $("download").disabled = false; });
  }

  /** Work still in the outbox drawn on a fresh package, so a new download hides none of it. */
  function withPending(pkg) {
    return getAll("outbox").then(function (items) {
      var list = pkg.structures.features;
      items.forEach(function (item) {
        if (item.kind === "create") {
          list.push({ type: "Feature", id: item.local, geometry: item.feature.geometry,
            properties: Object.assign({ pending: true }, item.feature.properties) });
        } else if (item.kind === "edit") {
          var feature = list.find(function (f) { return f.id === item.feature_id; });
          if (feature) { Object.assign(feature.properties, item.mine, { pending: true }); }
          if (feature && item.geometry) {
            feature.geometry = item.geometry;
            pkg.moved_ids = (pkg.moved_ids || []).concat([feature.id]);
          }
        }
      });
    });
  }

  function onFree() {
    var id = Number($("settlement").value);
    tx(["packages", "tiles"], "readwrite", function (packages, tiles) { tiles.delete(id); return packages.delete(id); }).then(function () {
      state.pkg = null;
      showTiles(null);
      $("free").hidden = true;
      draw();
      return storageUse();
    }).then(function (use) { say("offline-status", "Offline copy removed" + use + ".", "muted"); });
  }

  // ---------------------------------------------------------------- the map

  function emptyFc() { return { type: "FeatureCollection", features: [] }; }

  // The offline map's layers, drawn from the settlement's tile archive under the
  // features kept in IndexedDB (which carry the phone's own waiting edits): neighbouring
  // settlements, structures and facilities, and public walks, in muted colours.
  var TILE_LAYERS = [
    { id: "tiles-settlements", type: "line", source: "tiles", "source-layer": "settlements",
      paint: { "line-color": "#5c7cfa", "line-width": 1.5, "line-dasharray": [2, 2] } },
    { id: "tiles-traces", type: "line", source: "tiles", "source-layer": "traces",
      paint: { "line-color": "#9c36b5", "line-width": 1.5, "line-opacity": 0.5 } },
    { id: "tiles-structures", type: "fill", source: "tiles", "source-layer": "structures",
      filter: ["!=", ["geometry-type"], "Point"],
      paint: { "fill-color": "#ddd3c2", "fill-outline-color": "#8a7b62" } },
    { id: "tiles-structures-point", type: "circle", source: "tiles", "source-layer": "structures",
      filter: ["==", ["geometry-type"], "Point"],
      paint: { "circle-color": "#ddd3c2", "circle-radius": 5, "circle-stroke-color": "#8a7b62", "circle-stroke-width": 1 } },
    { id: "tiles-facilities", type: "circle", source: "tiles", "source-layer": "facilities",
      filter: ["==", ["geometry-type"], "Point"],
      paint: { "circle-color": "#0b7285", "circle-radius": 3, "circle-opacity": 0.6 } }
  ];

  /** Draw (or stop drawing) a settlement's tile archive: record = {id, etag, bytes, blob} or null. */
  function showTiles(record) {
    state.tiles = record;
    var map = state.map;
    if (!map || !state.mapLoaded || !state.protocol) { return; }  // drawn once the map loads
    TILE_LAYERS.forEach(function (layer) { if (map.getLayer(layer.id)) { map.removeLayer(layer.id); } });
    if (map.getSource("tiles")) { map.removeSource("tiles"); }
    if (!record) { return; }
    // one name per archive version: the reader keeps each archive's directory by name
    var name = "settlement-" + record.id + "-" + String(record.etag || "").replace(/[^0-9a-z]/gi, "") + ".pmtiles";
    if (!state.protocol.get(name)) {
      state.protocol.add(new pmtiles.PMTiles(new pmtiles.FileSource(new File([record.blob], name))));
    }
    map.addSource("tiles", { type: "vector", url: "pmtiles://" + name });
    TILE_LAYERS.forEach(function (layer) { map.addLayer(layer, "boundary-fill"); });
  }

  function initMap() {
    if (!window.maplibregl) { return; }
    if (window.pmtiles) {
      state.protocol = new pmtiles.Protocol();
      maplibregl.addProtocol("pmtiles", state.protocol.tile);
    }
    var map = new maplibregl.Map({
      container: "map",
      style: {
        version: 8,
        sources: {
          boundary: { type: "geojson", data: emptyFc() },
          structures: { type: "geojson", data: emptyFc(), promoteId: "fid" },
          facilities: { type: "geojson", data: emptyFc() },
          walk: { type: "geojson", data: emptyFc() },
          pick: { type: "geojson", data: emptyFc() }
        },
        layers: [
          { id: "background", type: "background", paint: { "background-color": "#f3efe6" } },
          { id: "boundary-fill", type: "fill", source: "boundary", paint: { "fill-color": "#1c7ed6", "fill-opacity": 0.06 } },
          { id: "boundary-line", type: "line", source: "boundary", paint: { "line-color": "#1c7ed6", "line-width": 2 } },
          { id: "structures-fill", type: "fill", source: "structures", filter: ["==", ["geometry-type"], "Polygon"],
            paint: { "fill-color": useColour(), "fill-outline-color": "#5c4a32" } },
          { id: "structures-point", type: "circle", source: "structures", filter: ["==", ["geometry-type"], "Point"],
            paint: { "circle-color": useColour(), "circle-radius": 6, "circle-stroke-color": "#222", "circle-stroke-width": 1 } },
          // waiting in the outbox: an orange outline (polygons) or ring (points)
          { id: "structures-pending-line", type: "line", source: "structures",
            filter: ["all", ["==", ["geometry-type"], "Polygon"], ["==", ["get", "pending"], true]],
            paint: { "line-color": "#f59f00", "line-width": 3 } },
          { id: "structures-pending", type: "circle", source: "structures",
            filter: ["all", ["==", ["geometry-type"], "Point"], ["==", ["get", "pending"], true]],
            paint: { "circle-color": "rgba(0,0,0,0)", "circle-radius": 10, "circle-stroke-color": "#f59f00", "circle-stroke-width": 3 } },
          { id: "facilities-line", type: "line", source: "facilities", filter: ["==", ["geometry-type"], "LineString"],
            paint: { "line-color": "#0b7285", "line-width": 3, "line-opacity": 0.7 } },
          { id: "facilities", type: "circle", source: "facilities", filter: ["==", ["geometry-type"], "Point"],
            paint: { "circle-color": "#0b7285", "circle-radius": 5 } },
          // the structure open in the form, and where a move will put it
          { id: "selected-line", type: "line", source: "structures", filter: ["==", ["get", "fid"], ""],
            paint: { "line-color": "#1c7ed6", "line-width": 3 } },
          { id: "selected-point", type: "circle", source: "structures", filter: ["==", ["get", "fid"], ""],
            paint: { "circle-color": "rgba(0,0,0,0)", "circle-radius": 11, "circle-stroke-color": "#1c7ed6", "circle-stroke-width": 3 } },
          { id: "pick-outline", type: "line", source: "pick", filter: ["==", ["geometry-type"], "Polygon"],
            paint: { "line-color": "#f59f00", "line-width": 3, "line-dasharray": [2, 1] } },
          { id: "walk", type: "line", source: "walk", paint: { "line-color": "#9c36b5", "line-width": 3 } },
          { id: "pick", type: "circle", source: "pick", filter: ["==", ["geometry-type"], "Point"], paint: { "circle-color": "#f59f00", "circle-radius": 8, "circle-stroke-color": "#fff", "circle-stroke-width": 2 } }
        ]
      },
      center: [36.8, -1.3],
      zoom: 11,
      attributionControl: false
    });
    map.addControl(new maplibregl.NavigationControl({ showCompass: false }), "top-right");
    map.on("click", onMapClick);
    state.map = map;
    window.makaziMap = map;
    map.on("load", function () { state.mapLoaded = true; showTiles(state.tiles); draw(); });
  }

  function useColour() {
    var expr = ["match", ["coalesce", ["get", "use"], "other"]];
    Object.keys(USE_COLOURS).forEach(function (k) { expr.push(k, USE_COLOURS[k]); });
    expr.push("#868e96");
    return expr;
  }

  function fit(bbox) {
    if (state.map && bbox) { state.map.fitBounds([[bbox[0], bbox[1]], [bbox[2], bbox[3]]], { padding: 20, duration: 0 }); }
  }

  function draw() {
    var pkg = state.pkg;
    if ($("map-empty")) { $("map-empty").hidden = Boolean(pkg); }
    if (!state.map || !state.mapLoaded) { return; }
    state.map.getSource("boundary").setData(pkg && pkg.boundary ? pkg.boundary : emptyFc());
    var structures = pkg ? pkg.structures.features.map(function (f) {
      var copy = Object.assign({}, f, { properties: Object.assign({ fid: String(f.id) }, f.properties) });
      return copy;
    }) : [];
    state.map.getSource("structures").setData({ type: "FeatureCollection", features: structures });
    state.map.getSource("facilities").setData(pkg ? pkg.facilities : emptyFc());
    var pick = state.position ? [{ type: "Feature", geometry: { type: "Point", coordinates: [state.position.lon, state.position.lat] }, properties: {} }] : [];
    if (state.moving && state.position && state.editing) {  // a preview of the footprint at its new place
      pick.unshift({ type: "Feature", geometry: movedTo(state.editing.geometry, state.position), properties: {} });
    }
    state.map.getSource("pick").setData({ type: "FeatureCollection", features: pick });
    var selected = ["==", ["get", "fid"], state.editing ? String(state.editing.id) : ""];
    state.map.setFilter("selected-line", ["all", ["!=", ["geometry-type"], "Point"], selected]);
    state.map.setFilter("selected-point", ["all", ["==", ["geometry-type"], "Point"], selected]);
    if (state.map.getLayer("tiles-structures")) {
      // structures moved on this phone (or in a conflict) are drawn from the features only:
      // the archive still has them where they stood when it was downloaded
      var moved = pkg && pkg.moved_ids && pkg.moved_ids.length ? ["!", ["in", ["get", "id"], ["literal", pkg.moved_ids]]] : true;
      state.map.setFilter("tiles-structures", ["all", ["!=", ["geometry-type"], "Point"], moved]);
      state.map.setFilter("tiles-structures-point", ["all", ["==", ["geometry-type"], "Point"], moved]);
    }
    var walk = state.walk && state.walk.points.length > 1 ? [{ type: "Feature", properties: {},
      geometry: { type: "LineString", coordinates: state.walk.points.map(function (p) { return [p.lon, p.lat]; }) } }] : [];
    state.map.getSource("walk").setData({ type: "FeatureCollection", features: walk });
  }

  function onMapClick(event) {
    if (state.picking) {
      state.position = { lon: event.lngLat.lng, lat: event.lngLat.lat, accuracy: null };
      showPosition();
      draw();
      return;
    }
    var hits = state.map.queryRenderedFeatures(event.point, { layers: ["structures-fill", "structures-point"] });
    if (!hits.length || !state.pkg) { return; }
    var fid = hits[0].properties.fid;
    var feature = state.pkg.structures.features.find(function (f) { return String(f.id) === fid; });
    if (feature) { openForm(feature); }
  }

  // ---------------------------------------------------------------- the structure form

  function fillUses() {
    var select = $("f-use");
    (state.config.uses || USES).forEach(function (use) {
      var option = document.createElement("option");
      option.value = use;
      option.textContent = use.replace("_", " ");
      select.appendChild(option);
    });
  }

  function openForm(feature) {
    state.editing = feature || null;
    state.position = null;
    var props = feature ? feature.properties : {};
    $("structure-title").textContent = feature ? "Structure " + (props.structure_number || feature.id) : "New structure";
    $("f-number").value = props.structure_number || "";
    $("f-use").value = props.use || "";
    $("f-wall").value = props.wall_material || "";
    $("f-roof").value = props.roof_material || "";
    $("f-storeys").value = props.storeys || "";
    $("place").hidden = Boolean(feature);
    $("place-hint").hidden = true;
    $("move-part").hidden = !feature;
    state.moving = false;
    $("rough").checked = false;
    $("rough-label").hidden = true;
    $("form-error").hidden = true;
    $("household-form").hidden = true;
    say("position", feature ? "" : "No position yet.", "muted");
    $("structure-form").hidden = false;
    $("structure-form").scrollIntoView({ block: "start" });
    state.picking = !feature;
    $("map").classList.toggle("picking", state.picking);
    showSignedIn();
    listHouseholds(feature);
    draw();
    $("f-number").focus();
  }

  /** Move the structure being edited: its new place comes from Use my location or a tap. */
  function onMove() {
    state.moving = true;
    state.position = null;
    state.picking = true;
    $("map").classList.add("picking");
    $("move-part").hidden = true;
    $("place").hidden = false;
    $("place-hint").hidden = false;
    $("structure-title").textContent = "Move " + $("structure-title").textContent;
    say("position", "No new position yet.", "muted");
    $("place").scrollIntoView({ block: "nearest" });
  }

  /** The feature's geometry moved so that its centre lands on p (a point, or a footprint shifted whole). */
  function movedTo(geometry, p) {
    if (!geometry || geometry.type === "Point") {
      return { type: "Point", coordinates: [round7(p.lon), round7(p.lat)] };
    }
    var centre = centreOf(geometry);
    var dx = p.lon - centre[0];
    var dy = p.lat - centre[1];
    function shift(c) { return typeof c[0] === "number" ? [round7(c[0] + dx), round7(c[1] + dy)] : c.map(shift); }
    return { type: geometry.type, coordinates: shift(geometry.coordinates) };
  }

  /** The mean of a geometry's first ring (without its closing vertex), or its point. */
  function centreOf(geometry) {
    var ring = geometry.coordinates;
    if (typeof ring[0] === "number") { return ring; }
    while (typeof ring[0][0] !== "number") { ring = ring[0]; }
    var n = ring.length > 1 && ring[0][0] === ring[ring.length - 1][0] && ring[0][1] === ring[ring.length - 1][1] ? ring.length - 1 : ring.length;
    var x = 0, y = 0;
    for (var i = 0; i < n; i++) { x += ring[i][0]; y += ring[i][1]; }
    return [x / n, y / n];
  }

  function closeForm() {
    $("structure-form").hidden = true;
    $("household-form").hidden = true;
    listHouseholds(null);  // names leave the screen with the form
    state.editing = null;
    state.moving = false;
    state.position = null;
    state.picking = false;
    $("map").classList.remove("picking");
    draw();
  }

  function rough(accuracy) { return accuracy !== null && accuracy > state.config.max_accuracy_m; }

  function showPosition() {
    var p = state.position;
    if (!p) { say("position", "No position yet.", "muted"); return; }
    var where = p.lat.toFixed(6) + ", " + p.lon.toFixed(6);
    if (p.accuracy === null) {
      say("position", "Placed by a tap at " + where + ".", "muted");
    } else if (rough(p.accuracy)) {
      say("position", "Rough fix: ±" + Math.round(p.accuracy) + " m (worse than " +
        state.config.max_accuracy_m + " m). Wait for a better fix, tap the map, or keep it.", "warn");
    } else {
      say("position", "Your position: " + where + " (±" + Math.round(p.accuracy) + " m)", "good");
    }
    $("rough-label").hidden = !rough(p.accuracy);
  }

  function onLocate() {
    if (!navigator.geolocation) { say("position", "This phone gives no position: tap the map.", "error"); return; }
    say("position", "Finding your position…", "muted");
    navigator.geolocation.getCurrentPosition(function (pos) {
      state.position = { lon: pos.coords.longitude, lat: pos.coords.latitude, accuracy: pos.coords.accuracy };
      showPosition();
      if (state.map) { state.map.jumpTo({ center: [state.position.lon, state.position.lat], zoom: Math.max(state.map.getZoom(), 17) }); }
      draw();
    }, function (error) {
      say("position", "No position (" + error.message + "): tap the map instead.", "error");
    }, { enableHighAccuracy: true, timeout: 30000, maximumAge: 0 });
  }

  function formValues() {
    var values = {};
    FIELDS.forEach(function (name) {
      var input = document.querySelector("#structure-form [name=" + name + "]");
      var raw = input.value.trim();
      values[name] = raw === "" ? null : name === "storeys" ? Number(raw) : raw;
    });
    return values;
  }

  function formError(text) {
    $("form-error").textContent = text;
    $("form-error").hidden = !text;
  }

  function onSave(event) {
    event.preventDefault();
    var values = formValues();
    if (values.storeys !== null && !(Number.isInteger(values.storeys) && values.storeys >= 1 && values.storeys <= 100)) {
      formError("Storeys must be a whole number from 1 to 100."); return;
    }
    var work;
    var p = state.position;
    if (!state.editing || state.moving) {
      if (!p) { formError((state.moving ? "Choose where it stands now" : "Place the structure") + ": Use my location, or tap the map."); return; }
      if (rough(p.accuracy) && !$("rough").checked) {
        formError("The position is only good to ±" + Math.round(p.accuracy) + " m. Tick 'Keep this rough position' to save it anyway.");
        return;
      }
    }
    if (state.editing) {
      work = queueEdit(state.editing, values, state.moving ? p : null);
    } else {
      work = queueCreate(values, p);
    }
    formError("");
    work.then(function () {
      closeForm();
      return refresh();
    }).catch(function (error) { formError("Not saved: " + error.message); });
  }

  function queueCreate(values, p) {
    var local = "local:" + uuid();
    var properties = Object.assign({}, values);
    if (p.accuracy !== null) { properties.position_accuracy_m = Math.round(p.accuracy * 10) / 10; }
    var feature = { type: "Feature", geometry: { type: "Point", coordinates: [round7(p.lon), round7(p.lat)] }, properties: properties };
    var item = { kind: "create", key: uuid(), local: local, feature: feature, label: "New structure " + (values.structure_number || ""), saved_at: new Date().toISOString() };
    return put("outbox", item).then(function () {
      if (state.pkg) {
        state.pkg.structures.features.push({ type: "Feature", id: local, geometry: feature.geometry,
          properties: Object.assign({ pending: true }, properties) });
        return put("packages", state.pkg);
      }
    });
  }

  function round7(x) { return Math.round(x * 1e7) / 1e7; }

  /** Note that a structure of the package no longer stands where the tile archive has it. */
  function markMoved(id) {
    var pkg = state.pkg;
    if (!pkg || typeof id !== "number") { return; }
    pkg.moved_ids = pkg.moved_ids || [];
    if (pkg.moved_ids.indexOf(id) < 0) { pkg.moved_ids.push(id); }
  }

  /** An edit (and a move to p, when given): merged into a waiting create or edit of the
   * same structure, else a new item carrying the version it started from (If-Match). */
  function queueEdit(feature, values, p) {
    var changed = {};
    FIELDS.forEach(function (name) {
      var before = feature.properties[name] === undefined ? null : feature.properties[name];
      if (values[name] !== before) { changed[name] = values[name]; }
    });
    var geometry = p ? movedTo(feature.geometry, p) : null;
    if (geometry) {
      // a tap has no GPS accuracy: the old figure would no longer describe the position
      changed.position_accuracy_m = p.accuracy === null ? null : Math.round(p.accuracy * 10) / 10;
    }
    if (!Object.keys(changed).length) { return Promise.resolve(); }
    return getAll("outbox").then(function (items) {
      var waiting = items.find(function (item) {
        return (item.kind === "create" && item.local === feature.id) ||
          (item.kind === "edit" && item.feature_id === feature.id && !item.refused);
      });
      var what = (geometry ? "Move" : "Edit") + " of structure " + (feature.properties.structure_number || feature.id);
      if (waiting && waiting.kind === "create") {
        Object.assign(waiting.feature.properties, changed);
        if (geometry) { waiting.feature.geometry = geometry; }
      } else if (waiting) {
        Object.keys(changed).forEach(function (name) {
          if (!(name in waiting.base)) { waiting.base[name] = feature.properties[name] === undefined ? null : feature.properties[name]; }
        });
        Object.assign(waiting.mine, changed);
        if (geometry) { waiting.geometry = geometry; waiting.label = what; }
      } else {
        var base = {};
        FIELDS.concat(Object.keys(changed)).forEach(function (name) { base[name] = feature.properties[name] === undefined ? null : feature.properties[name]; });
        waiting = { kind: "edit", key: uuid(), collection: "structures", feature_id: feature.id,
          base_version: feature.properties.version, base: base, mine: changed,
          geometry: geometry, base_geometry: geometry ? feature.geometry : null,
          label: what, saved_at: new Date().toISOString() };
      }
      return put("outbox", waiting);
    }).then(function () {
      Object.assign(feature.properties, changed, { pending: true });
      if (geometry) { feature.geometry = geometry; markMoved(feature.id); }
      if (state.pkg) { return put("packages", state.pkg); }
    });
  }

  // ---------------------------------------------------------------- households

  /** A structure's households in the form: enumerators get the list from the server when
   * online (on screen only: never written to storage, gone when the form closes); everyone
   * else, and anyone offline, the count the structure carries. */
  function listHouseholds(feature) {
    var list = $("households-list");
    list.textContent = "";
    var part = $("households-list-part");
    part.hidden = !feature || typeof feature.id !== "number";
    if (part.hidden) { say("households-status", ""); return Promise.resolve(); }
    var count = feature.properties.households;
    var counted = count === null || count === undefined ? "Households: not counted yet" :
      count + (count === 1 ? " household" : " households");
    var queued = getAll("outbox").then(function (items) {
      var n = items.filter(function (item) { return item.kind === "household" && item.structure === feature.id; }).length;
      return n ? "; " + n + " more waiting in the outbox" : "";
    });
    if (!atLeast("enumerator")) {
      return queued.then(function (more) { if (state.editing === feature) { say("households-status", counted + more + ".", "muted"); } });
    }
    if (!navigator.onLine) {
      return queued.then(function (more) {
        if (state.editing === feature) {
          say("households-status", counted + more + ". Names are listed when you are online (never kept on this phone).", "muted");
        }
      });
    }
    say("households-status", "Loading households…", "muted");
    return Promise.all([call("GET", "/structures/" + feature.id + "/households"), queued]).then(function (r) {
      var response = r[0];
      if (!response.ok) {
        return problem(response).then(function (detail) {
          if (state.editing === feature) { say("households-status", counted + r[1] + " (list unavailable: " + detail + ").", "muted"); }
        });
      }
      return response.json().then(function (doc) {
        if (state.editing !== feature) { return; }  // the form moved on meanwhile
        var households = doc.households || [];
        list.textContent = "";
        households.forEach(function (h) {
          var li = document.createElement("li");
          var parts = [h.head_name || "(no name)"];
          if (h.members !== null && h.members !== undefined) { parts.push(h.members + (h.members === 1 ? " member" : " members")); }
          if (h.tenure) { parts.push(h.tenure.replace("_", " ")); }
          if (h.phone) { parts.push(h.phone); }
          li.textContent = parts.join(" · ");
          list.appendChild(li);
        });
        say("households-status", households.length + (households.length === 1 ? " household" : " households") +
          " on the server" + r[1] + ". Shown here only, never kept on this phone.", "muted");
      });
    }, function () {
      if (state.editing === feature) { say("households-status", counted + ". No connection: names could not be listed.", "muted"); }
    });
  }

  function onAddHousehold() {
    $("household-form").hidden = false;
    $("household-form").reset();
    $("household-form").scrollIntoView({ block: "start" });
    $("h-head").focus();
  }

  function onSaveHousehold(event) {
    event.preventDefault();
    var feature = state.editing;
    if (!feature) { return; }
    var household = {};
    ["head_name", "phone", "tenure"].forEach(function (name) {
      var v = document.querySelector("#household-form [name=" + name + "]").value.trim();
      if (v) { household[name] = v; }
    });
    ["members", "rent_kes"].forEach(function (name) {
      var v = document.querySelector("#household-form [name=" + name + "]").value.trim();
      if (v) { household[name] = Number(v); }
    });
    var item = { kind: "household", key: uuid(), structure: feature.id, household: household,
      label: "Household in structure " + (feature.properties.structure_number || feature.id), saved_at: new Date().toISOString() };
    put("outbox", item).then(function () {
      $("household-form").reset();
      $("household-form").hidden = true;
      say("sync-status", "Household saved to the outbox; it leaves this phone at the next Sync.");
      return Promise.all([refresh(), listHouseholds(feature)]);
    });
  }

  // ---------------------------------------------------------------- walks

  function onStartWalk() {
    if (!navigator.geolocation) { say("walk-status", "This phone gives no position.", "error"); return; }
    state.walk = { started: new Date().toISOString(), points: [] };
    put("meta", state.walk, "walk").then(watchWalk);
  }

  function watchWalk() {
    $("start-walk").hidden = true;
    $("stop-walk").hidden = false;
    showWalk();
    state.watch = navigator.geolocation.watchPosition(function (pos) {
      if (!state.walk) { return; }
      state.walk.points.push({ lat: pos.coords.latitude, lon: pos.coords.longitude,
        ele: pos.coords.altitude, accuracy: pos.coords.accuracy, time: new Date(pos.timestamp || Date.now()).toISOString() });
      put("meta", state.walk, "walk");  // every fix is kept at once: a crash loses none
      showWalk();
      draw();
    }, function (error) {
      say("walk-status", "Position lost (" + error.message + "); still recording.", "warn");
    }, { enableHighAccuracy: true, maximumAge: 0, timeout: 60000 });
  }

  function showWalk() {
    var pts = state.walk ? state.walk.points : [];
    var last = pts.length ? pts[pts.length - 1] : null;
    var text = "Walking: " + pts.length + " points";
    if (last) { text += ", last ±" + Math.round(last.accuracy) + " m" + (rough(last.accuracy) ? " (rough)" : ""); }
    say("walk-status", text, last && rough(last.accuracy) ? "warn" : "muted");
  }

  function onStopWalk() {
    if (state.watch !== null) { navigator.geolocation.clearWatch(state.watch); state.watch = null; }
    var walk = state.walk;
    state.walk = null;
    $("start-walk").hidden = false;
    $("stop-walk").hidden = true;
    if (!walk || walk.points.length < 2) {
      del("meta", "walk");
      say("walk-status", "Too few positions to keep (" + (walk ? walk.points.length : 0) + ").", "warn");
      draw();
      return;
    }
    var name = "Walk " + walk.started.slice(0, 16).replace("T", " ");
    var item = { kind: "trace", key: uuid(), name: name, gpx: gpx(name, walk.points),
      settlement_id: state.pkg ? state.pkg.id : null,
      label: name + " (" + walk.points.length + " points)", saved_at: new Date().toISOString() };
    tx(["outbox", "meta"], "readwrite", function (outbox, meta) { outbox.put(item); return meta.delete("walk"); })
      .then(function () {
        say("walk-status", "Walk saved: " + walk.points.length + " points.", "muted");
        draw();
        return refresh();
      });
  }

  function escapeXml(s) { return String(s).replace(/[<>&"]/g, function (c) { return { "<": "&lt;", ">": "&gt;", "&": "&amp;", '"': "&quot;" }[c]; }); }

  /** GPX 1.1; each point's accuracy (metres, as the phone reported it) in its extensions. */
  function gpx(name, points) {
    var rows = points.map(function (p) {
      return '<trkpt lat="' + p.lat.toFixed(7) + '" lon="' + p.lon.toFixed(7) + '">' +
        (p.ele === null || p.ele === undefined ? "" : "<ele>" + p.ele.toFixed(1) + "</ele>") +
        "<time>" + p.time + "</time>" +
        "<extensions><makazi:accuracy_m>" + p.accuracy.toFixed(1) + "</makazi:accuracy_m></extensions></trkpt>";
    });
    return '<?xml version="1.0" encoding="UTF-8"?>\n' +
      '<gpx version="1.1" creator="Makazi field app" xmlns="http://www.topografix.com/GPX/1/1" ' +
      'xmlns:makazi="https://makazi.example/gpx/1">' +
      "<trk><name>" + escapeXml(name) + "</name><trkseg>" + rows.join("") + "</trkseg></trk></gpx>\n";
  }

  // ---------------------------------------------------------------- the outbox and sync

  function refreshCount() {
    return getAll("outbox").then(function (items) {
      var waiting = items.filter(function (item) { return !item.refused; });
      $("waiting").textContent = waiting.length + " waiting";
      var list = $("outbox-list");
      list.textContent = "";
      items.forEach(function (item) {
        var li = document.createElement("li");
        var text = document.createElement("span");
        text.textContent = item.label + (item.refused ? ": refused (" + item.refused + ")" : "");
        li.appendChild(text);
        if (item.refused) {
          li.className = "refused";
          var discard = document.createElement("button");
          discard.type = "button";
          discard.className = "secondary";
          discard.textContent = "Discard";
          discard.addEventListener("click", function () { del("outbox", item.seq).then(refresh); });
          li.appendChild(discard);
        }
        list.appendChild(li);
      });
      return waiting.length;
    });
  }

  function refresh() {
    return Promise.all([refreshCount(), showConflicts()]).then(function (r) { draw(); return r[0]; });
  }

  var SignInRefused = function (detail) { this.message = detail; };

  function ids() { return get("meta", "ids").then(function (v) { return v || {}; }); }

  /** The server id of a structure: its own, or the one its create got; null while unsent. */
  function serverId(id, map) {
    if (typeof id === "number") { return id; }
    return map[id] === undefined ? null : map[id];
  }

  function send(item, map) {
    var headers = { "Idempotency-Key": item.key };
    if (item.kind === "create") {
      headers["Content-Type"] = "application/geo+json";
      return call("POST", "/collections/structures/items", { headers: headers, body: JSON.stringify(item.feature) })
        .then(function (response) {
          if (response.status !== 201 && response.status !== 200) { return response; }
          return response.json().then(function (created) {
            map[item.local] = created.id;
            return put("meta", map, "ids").then(function () { return replaceLocal(item.local, created, true); })
              .then(function () { return { done: true }; });
          });
        });
    }
    if (item.kind === "edit") {
      var fid = serverId(item.feature_id, map);
      if (fid === null) { return Promise.resolve({ skip: true }); }
      headers["Content-Type"] = "application/geo+json";
      headers["If-Match"] = '"' + item.base_version + '"';
      var patch = { type: "Feature", properties: item.mine };
      if (item.geometry) { patch.geometry = item.geometry; }
      return call("PATCH", "/collections/structures/items/" + fid, { headers: headers, body: JSON.stringify(patch) })
        .then(function (response) {
          if (response.status === 200) {
            return response.json().then(function (feature) { return replaceLocal(item.feature_id, feature, true); })
              .then(function () { return { done: true }; });
          }
          if (response.status === 412) { return conflictFrom(item, fid).then(function () { return { done: true, conflict: true }; }); }
          return response;
        });
    }
    if (item.kind === "household") {
      var sid = serverId(item.structure, map);
      if (sid === null) { return Promise.resolve({ skip: true }); }
      headers["Content-Type"] = "application/json";
      return call("POST", "/structures/" + sid + "/households", { headers: headers, body: JSON.stringify(item.household) })
        .then(function (response) { return response.status === 201 || response.status === 200 ? { done: true } : response; });
    }
    if (item.kind === "trace") {
      headers["Content-Type"] = "application/gpx+xml";
      var query = "?visibility=private&name=" + encodeURIComponent(item.name) +
        (item.settlement_id ? "&settlement_id=" + item.settlement_id : "");
      return call("POST", "/traces" + query, { headers: headers, body: item.gpx })
        .then(function (response) { return response.status === 201 || response.status === 200 ? { done: true } : response; });
    }
    if (item.kind === "report") {
      headers["Content-Type"] = "application/json";
      return call("POST", "/conflicts", { headers: headers, body: JSON.stringify(item.report) }).then(function (response) {
        if (response.status !== 201 && response.status !== 200) { return response; }
        return response.json().then(function (record) {
          return get("conflicts", item.conflict).then(function (c) {
            if (c) { c.server_id = record.id; return put("conflicts", c); }
            map["conflict:" + item.conflict] = record.id;
            return put("meta", map, "ids");
          });
        }).then(function () { return { done: true }; });
      });
    }
    if (item.kind === "resolution") {
      var cid = item.server_id || map["conflict:" + item.conflict];
      if (!cid) { return Promise.resolve({ skip: true }); }
      headers["Content-Type"] = "application/json";
      return call("POST", "/conflicts/" + cid + "/resolution", { headers: headers, body: JSON.stringify({ resolution: item.resolution }) })
        .then(function (response) { return response.ok ? { done: true } : response; });
    }
    return Promise.resolve({ skip: true });
  }

  /** The server's answer replaces the local copy of a structure (new id, version).
   *
   * During a sync the copy changes in memory and is written once at the end
   * (savePackage): writing a settlement's whole package after every item made a sync of
   * 100 structures several times slower.  Nothing depends on it for safety: the outbox
   * item is gone only once answered, and the local-to-server id map is written at once.
   */
  function replaceLocal(localId, feature, later) {
    var pkg = state.pkg;
    if (!pkg) { return Promise.resolve(); }
    var list = pkg.structures.features;
    var at = list.findIndex(function (f) { return f.id === localId || f.id === feature.id; });
    var fresh = { type: "Feature", id: feature.id, geometry: feature.geometry, properties: feature.properties };
    if (at >= 0) { list[at] = fresh; } else { list.push(fresh); }
    state.pkgDirty = true;
    return later ? Promise.resolve() : savePackage();
  }

  function savePackage() {
    if (!state.pkg || !state.pkgDirty) { return Promise.resolve(); }
    state.pkgDirty = false;
    return put("packages", state.pkg);
  }

  /** A 412: fetch theirs, keep the three versions on the phone, queue a report for reviewers. */
  function conflictFrom(item, fid) {
    return call("GET", "/collections/structures/items/" + fid).then(function (response) {
      if (!response.ok) { throw new Error("could not read structure " + fid); }
      return response.json();
    }).then(function (theirs) {
      var conflict = { id: uuid(), collection: "structures", feature_id: fid, local_id: item.feature_id,
        base_version: item.base_version, theirs_version: theirs.properties.version,
        base: item.base, mine: item.mine, theirs: theirs.properties, theirs_feature: theirs,
        mine_geometry: item.geometry || null, base_geometry: item.base_geometry || null,
        label: item.label, server_id: null };
      var base = item.base;
      var mine = item.mine;
      if (item.geometry) {  // a move: the position is one more field for the reviewers
        base = Object.assign({ geometry: item.base_geometry }, item.base);
        mine = Object.assign({ geometry: item.geometry }, item.mine);
      }
      var report = { kind: "report", key: uuid(), conflict: conflict.id, label: "Conflict report: " + item.label,
        report: { collection: "structures", feature_id: fid, base_version: item.base_version, base: base, mine: mine } };
      return tx(["conflicts", "outbox"], "readwrite", function (conflicts, outbox) {
        conflicts.put(conflict);
        outbox.put(report);
        return outbox.delete(item.seq);
      });
    });
  }

  function sync() {
    if (state.syncing) { return state.syncing; }
    if (!token()) { say("sync-status", "Sign in to sync; your saved work stays here.", "error"); return Promise.resolve(); }
    var started = performance.now();
    var sent = 0;
    var conflicts = 0;
    say("sync-status", "Syncing…");
    $("sync").disabled = true;
    state.syncing = ids().then(function (map) {
      var tried = {};
      var queue = [];
      // the outbox is read again whenever the queue runs dry: sending can add items
      // (a conflict's report), and each item is tried at most once per Sync
      function refill() {
        return getAll("outbox").then(function (items) {
          queue = items.filter(function (item) { return !item.refused && !tried[item.seq]; });
          return queue.length ? next() : null;
        });
      }
      function next() {
          var item = queue.shift();
          if (!item) { return refill(); }
          tried[item.seq] = true;
          // an item is read again before sending: a conflict may have replaced it meanwhile
          return send(item, map).then(function (result) {
            if (result.done) {
              if (result.conflict) { conflicts += 1; } else { sent += 1; }
              return tx(["outbox"], "readwrite", function (outbox) { return outbox.delete(item.seq); }).then(next);
            }
            if (result.skip) { return next(); }
            var response = result;
            if (response.status === 401 || response.status === 403) {
              return problem(response).then(function (detail) { throw new SignInRefused(detail); });
            }
            if (response.status >= 500 || response.status === 429) {
              return problem(response).then(function (detail) { throw new Error("server: " + detail); });
            }
            return problem(response).then(function (detail) {
              item.refused = response.status + ": " + detail;
              return put("outbox", item);
            }).then(next);
          });
      }
      return refill();
    }).then(function () {
      return savePackage().then(refresh).then(function (left) {
        var ms = Math.round(performance.now() - started);
        window.makaziField.lastSync = { sent: sent, ms: ms, left: left, conflicts: conflicts };
        var clash = conflicts ? "; " + conflicts + (conflicts === 1 ? " edit was" : " edits were") +
          " changed by someone else meanwhile: choose under Conflicts" : "";
        say("sync-status", "Synced " + sent + (sent === 1 ? " item" : " items") + clash +
          (left ? "; " + left + " still waiting" : "") + ".", conflicts ? "warn" : undefined);
      });
    }).catch(function (error) {
      if (error instanceof SignInRefused) {
        say("sync-status", "Sign-in refused (" + error.message + "): nothing was lost; sign in again and Sync.", "error");
        checkSignIn();
      } else {
        say("sync-status", "Sync stopped (" + reason(error) + "); everything not sent is kept.", "warn");
      }
      return savePackage().then(refresh);
    }).then(function () {
      state.syncing = false;
      $("sync").disabled = false;
    });
    return state.syncing;
  }

  // ---------------------------------------------------------------- conflicts

  function show(v) { return v === null || v === undefined || v === "" ? "–" : String(v); }

  function showConflicts() {
    return getAll("conflicts").then(function (conflicts) {
      $("conflicts-section").hidden = !conflicts.length;
      var box = $("conflicts");
      box.textContent = "";
      conflicts.forEach(function (c) {
        var div = document.createElement("div");
        div.className = "conflict";
        var title = document.createElement("strong");
        title.textContent = c.label + " (yours from version " + c.base_version + ", theirs is version " + c.theirs_version + ")";
        div.appendChild(title);
        var table = document.createElement("table");
        var head = table.insertRow();
        ["Field", "Was", "Theirs", "Mine"].forEach(function (h) {
          var th = document.createElement("th"); th.textContent = h; head.appendChild(th);
        });
        var rows = Object.keys(c.mine).map(function (name) {
          return [LABELS[name] || name, show(c.base[name]), show(c.theirs[name]), show(c.mine[name]), c.theirs[name] !== c.base[name]];
        });
        if (c.mine_geometry) {
          var theirsMoved = JSON.stringify(c.theirs_feature.geometry) !== JSON.stringify(c.base_geometry);
          rows.unshift(["Place", "as it was", theirsMoved ? "moved" : "as it was", "moved", theirsMoved]);
        }
        rows.forEach(function (r) {
          var row = table.insertRow();
          r.slice(0, 4).forEach(function (v, i) {
            var cell = row.insertCell(); cell.textContent = v;
            if (i === 2 && r[4]) { cell.className = "changed"; }
          });
        });
        div.appendChild(table);
        var row = document.createElement("div");
        row.className = "row";
        [["Keep mine", "mine"], ["Keep theirs", "theirs"]].forEach(function (b) {
          var button = document.createElement("button");
          button.type = "button";
          button.textContent = b[0];
          if (b[1] === "theirs") { button.className = "secondary"; }
          button.addEventListener("click", function () { resolve(c, b[1]); });
          row.appendChild(button);
        });
        div.appendChild(row);
        box.appendChild(div);
      });
    });
  }

  /** Keep mine: a new edit on top of theirs; keep theirs: take theirs. Either way the choice is reported. */
  function resolve(c, side) {
    var items = [{ kind: "resolution", key: uuid(), conflict: c.id, server_id: c.server_id, resolution: side,
      label: "Conflict settled (" + side + "): " + c.label }];
    if (side === "mine") {
      var base = {};
      Object.keys(c.mine).forEach(function (name) { base[name] = c.theirs[name] === undefined ? null : c.theirs[name]; });
      items.unshift({ kind: "edit", key: uuid(), collection: "structures", feature_id: c.feature_id,
        base_version: c.theirs_version, base: base, mine: c.mine, label: c.label + " (kept mine)",
        geometry: c.mine_geometry || null, base_geometry: c.mine_geometry ? c.theirs_feature.geometry : null,
        saved_at: new Date().toISOString() });
    }
    return tx(["outbox", "conflicts"], "readwrite", function (outbox, conflicts) {
      items.forEach(function (item) { outbox.put(item); });
      return conflicts.delete(c.id);
    }).then(function () {
      var theirs = c.theirs_feature;
      var props = side === "mine" ? Object.assign({}, theirs.properties, c.mine, { pending: true }) : theirs.properties;
      var geometry = side === "mine" && c.mine_geometry ? c.mine_geometry : theirs.geometry;
      markMoved(c.feature_id);  // either side may stand elsewhere than in the tile archive
      return replaceLocal(c.local_id, { id: c.feature_id, geometry: geometry, properties: props });
    }).then(refresh).then(function () {
      say("sync-status", side === "mine" ? "Your version will be sent at the next Sync." : "Their version kept; your edit was dropped.");
    });
  }

  // ---------------------------------------------------------------- start

  function loadConfig() {
    return fetch("/field/config.json").then(function (r) { return r.ok ? r.json() : null; })
      .then(function (config) { if (config) { state.config = config; } }, function () { /* offline, uncached */ });
  }

  function registerWorker() {
    if (!("serviceWorker" in navigator)) { return; }
    navigator.serviceWorker.register("/field/sw.js", { scope: "/field" }).catch(function (error) {
      alertMessage("Offline use is unavailable: " + error.message);
    });
  }

  function start() {
    window.makaziField = { ready: false, sync: sync };
    showNet();
    window.addEventListener("online", function () { showNet(); checkSignIn().then(function () { if (token()) { sync(); } }); });
    window.addEventListener("offline", showNet);
    registerWorker();
    state.role = localStorage.getItem(TOKEN_KEY + "-role");
    showSignedIn();
    $("signin").addEventListener("submit", onSignIn);
    $("signout").addEventListener("click", onSignOut);
    $("settlement").addEventListener("change", onSettlementChange);
    $("download").addEventListener("click", onDownload);
    $("free").addEventListener("click", onFree);
    $("new-structure").addEventListener("click", function () { openForm(null); });
    $("move").addEventListener("click", onMove);
    $("locate").addEventListener("click", onLocate);
    $("structure-form").addEventListener("submit", onSave);
    $("cancel").addEventListener("click", closeForm);
    $("add-household").addEventListener("click", onAddHousehold);
    $("household-form").addEventListener("submit", onSaveHousehold);
    $("household-cancel").addEventListener("click", function () { $("household-form").hidden = true; });
    $("start-walk").addEventListener("click", onStartWalk);
    $("stop-walk").addEventListener("click", onStopWalk);
    $("sync").addEventListener("click", function () { sync(); });
    initMap();
    openDb().then(function (db) {
      state.db = db;
      return loadConfig();
    }).then(function () {
      fillUses();
      return Promise.all([checkSignIn(), loadSettlementList(), get("meta", "walk")]);
    }).then(function (results) {
      var walk = results[2];
      if (walk) { state.walk = walk; watchWalk(); }  // a walk survives a reload
      return onSettlementChange();
    }).then(refresh).then(function () {
      window.makaziField.ready = true;
    }).catch(function (error) {
      alertMessage("The app could not start: " + (error && error.message ? error.message : error));
    });
  }

  start();
})();
