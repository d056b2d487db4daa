/* Makazi web map.
 *
 * Everything comes from this server: MapLibre GL JS (/static/vendor), the
 * vector tiles (/tiles), the layers' GeoJSON (/collections), summaries and
 * trace uploads.  The default background is a plain colour, so the map works
 * with no internet; the OpenStreetMap raster basemap is an opt-in.
 *
 * No text is drawn by MapLibre (that would need glyph files from a server);
 * settlement names are HTML markers instead.
 */
(function () {
  "use strict";

  var TOKEN_KEY = "makazi.token";
  var BASEMAP_KEY = "makazi.basemap";
  var PAGE_LIMIT = 10000;
  var MAX_DOWNLOAD_PAGES = 100;

  var STATUS_COLOURS = {
    recognised: "#2f9e44",
    surveyed: "#1c7ed6",
    proposed: "#f08c00",
    contested: "#e03131",
  };
  var USE_COLOURS = {
    residential: "#c9a26b",
    business: "#3b6ea8",
    mixed: "#8c6bb1",
    religious: "#5c940d",
    school: "#f59f00",
    clinic: "#e8590c",
    toilet: "#0c8599",
    water_point: "#22b8cf",
    other: "#868e96",
  };
  var FACILITY_COLOURS = {
    water_point: "#1098ad",
    toilet_block: "#0b7285",
    school: "#f59f00",
    clinic: "#d6336c",
    drainage: "#4dabf7",
    road: "#495057",
    other: "#868e96",
  };
  // Facility types mapped as lines (drawn by "facilities-lines"): a line in the legend.
  var LINE_FACILITIES = { drainage: true, road: true };
  var CONDITION_COLOURS = { working: "#2b8a3e", needs_repair: "#f08c00", broken: "#c92a2a" };
  var TRACE_COLOUR = "#9c36b5";
  var UPLOAD_COLOUR = "#ff006e";

  // Which MapLibre layers belong to which collection (for toggles and clicks).
  var GROUPS = {
    settlements: ["settlements-fill", "settlements-line"],
    structures: ["structures-fill", "structures-line"],
    facilities: ["facilities-lines", "facilities-polygons", "facilities-points"],
    traces: ["traces-line"],
  };
  var GROUP_LABELS = {
    settlements: "Settlement boundaries",
    structures: "Structures (zoom in)",
    facilities: "Facilities",
    traces: "Public GPS traces",
  };
  var CLICKABLE = [
    "facilities-points",
    "facilities-lines",
    "facilities-polygons",
    "traces-line",
    "uploaded-trace-line",
    "structures-fill",
    "settlements-fill",
  ];
  var COLLECTION_OF_LAYER = {
    "settlements-fill": "settlements",
    "structures-fill": "structures",
    "facilities-points": "facilities",
    "facilities-lines": "facilities",
    "facilities-polygons": "facilities",
    "traces-line": "traces",
    "uploaded-trace-line": "traces",
  };

  var $ = function (id) { return document.getElementById(id); };
  var settlements = {}; // id -> {feature, bbox}
  var selectedSettlement = null;
  var labels = [];

  // ------------------------------------------------------------------ helpers
  function token() {
    try { return window.localStorage.getItem(TOKEN_KEY) || ""; } catch (e) { return ""; }
  }

  function sameOrigin(url) {
    try { return new URL(url, window.location.href).origin === window.location.origin; }
    catch (e) { return false; }
  }

  function authHeaders(extra) {
    var headers = Object.assign({}, extra || {});
    var t = token();
    if (t) { headers.Authorization = "Bearer " + t; }
    return headers;
  }

  function api(path, options) {
    options = options || {};
    options.headers = authHeaders(options.headers);
    return fetch(path, options).then(function (response) {
      var type = response.headers.get("content-type") || "";
      var body = type.indexOf("json") >= 0 ? response.json() : response.text();
      return body.then(function (data) {
        if (!response.ok) {
          var detail = (data && data.detail) || response.statusText;
          var error = new Error(detail);
          error.status = response.status;
          error.body = data;
          throw error;
        }
        return data;
      });
    });
  }

  function escapeHtml(value) {
    return String(value).replace(/[&<>"']/g, function (c) {
      return { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c];
    });
  }

  function say(text) {
    var box = $("message");
    box.textContent = text;
    box.hidden = false;
    window.clearTimeout(say.timer);
    say.timer = window.setTimeout(function () { box.hidden = true; }, 6000);
  }

  function formatNumber(value) {
    if (value === null || value === undefined) { return "—"; }
    if (typeof value === "number") {
      return Math.abs(value) >= 100 ? Math.round(value).toLocaleString() :
        String(Math.round(value * 100) / 100);
    }
    if (typeof value === "object") {
      return Object.keys(value).map(function (k) {
        return escapeHtml(words(k)) + ": " + formatNumber(value[k]);
      }).join(", ");
    }
    return escapeHtml(words(String(value)));
  }

  // Codes such as "iron_sheet" or "toilet_block" read as words ("iron sheet").
  function words(value) {
    return /^[a-z0-9]+(_[a-z0-9]+)+$/.test(value) ? value.replace(/_/g, " ") : value;
  }

  function table(rows) {
    return "<table>" + rows.map(function (row) {
      return "<tr><td>" + escapeHtml(row[0]) + "</td><td>" + row[1] + "</td></tr>";
    }).join("") + "</table>";
  }

  function bboxOf(geometry) {
    var box = [Infinity, Infinity, -Infinity, -Infinity];
    (function walk(coords) {
      if (typeof coords[0] === "number") {
        box[0] = Math.min(box[0], coords[0]); box[1] = Math.min(box[1], coords[1]);
        box[2] = Math.max(box[2], coords[0]); box[3] = Math.max(box[3], coords[1]);
        return;
      }
      coords.forEach(walk);
    })(geometry.type === "GeometryCollection" ?
      geometry.geometries.map(function (g) { return g.coordinates; }) : geometry.coordinates);
    return box;
  }

  function matchColours(property, colours, fallback) {
    var expression = ["match", ["get", property]];
    Object.keys(colours).forEach(function (key) { expression.push(key, colours[key]); });
    expression.push(fallback);
    return expression;
  }

  // -------------------------------------------------------------------- style
  function style(tilejsonUrl) {
    return {
      version: 8,
      sources: {
        makazi: { type: "vector", url: tilejsonUrl },
        uploaded: { type: "geojson", data: { type: "FeatureCollection", features: [] } },
      },
      layers: [
        { id: "background", type: "background", paint: { "background-color": "#f3efe6" } },
        {
          id: "settlements-fill", type: "fill", source: "makazi", "source-layer": "settlements",
          paint: {
            "fill-color": matchColours("status", STATUS_COLOURS, "#868e96"),
            "fill-opacity": ["interpolate", ["linear"], ["zoom"], 10, 0.35, 16, 0.08],
          },
        },
        {
          id: "structures-fill", type: "fill", source: "makazi", "source-layer": "structures",
          minzoom: 14,
          paint: {
            "fill-color": matchColours("use", USE_COLOURS, "#868e96"),
            "fill-opacity": 0.9,
          },
        },
        {
          id: "structures-line", type: "line", source: "makazi", "source-layer": "structures",
          minzoom: 16,
          paint: { "line-color": "#5c4a32", "line-width": 0.5, "line-opacity": 0.6 },
        },
        {
          id: "settlements-line", type: "line", source: "makazi", "source-layer": "settlements",
          paint: {
            "line-color": matchColours("status", STATUS_COLOURS, "#868e96"),
            "line-width": ["interpolate", ["linear"], ["zoom"], 10, 1.5, 16, 3],
            "line-dasharray": ["case", ["==", ["get", "status"], "contested"],
              ["literal", [2, 1]], ["literal", [1, 0]]],
          },
        },
        {
          id: "facilities-polygons", type: "fill", source: "makazi", "source-layer": "facilities",
          filter: ["==", ["geometry-type"], "Polygon"],
          paint: { "fill-color": matchColours("type", FACILITY_COLOURS, "#868e96"),
            "fill-opacity": 0.6 },
        },
        {
          id: "facilities-lines", type: "line", source: "makazi", "source-layer": "facilities",
          filter: ["==", ["geometry-type"], "LineString"],
          layout: { "line-cap": "round", "line-join": "round" },
          paint: {
            "line-color": matchColours("type", FACILITY_COLOURS, "#868e96"),
            "line-width": ["interpolate", ["linear"], ["zoom"], 12, 2, 18, 7],
          },
        },
        {
          id: "traces-line", type: "line", source: "makazi", "source-layer": "traces",
          layout: { "line-cap": "round", "line-join": "round" },
          paint: { "line-color": TRACE_COLOUR, "line-width": 3, "line-opacity": 0.85 },
        },
        {
          id: "facilities-points", type: "circle", source: "makazi", "source-layer": "facilities",
          filter: ["==", ["geometry-type"], "Point"],
          paint: {
            "circle-color": matchColours("type", FACILITY_COLOURS, "#868e96"),
            "circle-radius": ["interpolate", ["linear"], ["zoom"], 12, 2.5, 18, 7],
            "circle-stroke-color": matchColours("condition", CONDITION_COLOURS, "#ffffff"),
            "circle-stroke-width": 2,
          },
        },
        {
          id: "uploaded-trace-line", type: "line", source: "uploaded",
          layout: { "line-cap": "round", "line-join": "round" },
          paint: { "line-color": UPLOAD_COLOUR, "line-width": 4 },
        },
      ],
    };
  }

  // ------------------------------------------------------------------- legend
  function legend() {
    function group(title, colours, kind, lines) {
      return '<div class="legend-group"><b>' + escapeHtml(title) + "</b>" +
        Object.keys(colours).map(function (key) {
          return '<span class="legend-item"><span class="swatch ' +
            (lines && lines[key] ? "line" : kind) +
            '" style="background:' + colours[key] + '"></span>' +
            escapeHtml(key.replace(/_/g, " ")) + "</span>";
        }).join("") + "</div>";
    }
    $("legend").innerHTML =
      group("Settlement status", STATUS_COLOURS, "") +
      group("Structure use", USE_COLOURS, "") +
      group("Facility type", FACILITY_COLOURS, "dot", LINE_FACILITIES) +
      group("Facility condition (ring)", CONDITION_COLOURS, "dot") +
      group("Traces", { "public trace": TRACE_COLOUR, "your upload": UPLOAD_COLOUR }, "line");
  }

  function layerToggles(map) {
    var box = $("layer-toggles");
    Object.keys(GROUPS).forEach(function (name) {
      var label = document.createElement("label");
      label.className = "toggle";
      var input = document.createElement("input");
      input.type = "checkbox";
      input.checked = true;
      input.dataset.group = name;
      input.addEventListener("change", function () {
        GROUPS[name].forEach(function (id) {
          map.setLayoutProperty(id, "visibility", input.checked ? "visible" : "none");
        });
        if (name === "settlements") {
          labels.forEach(function (label) { label.el.hidden = !input.checked; });
          placeLabels(map);
        }
      });
      label.appendChild(input);
      label.appendChild(document.createTextNode(" " + GROUP_LABELS[name]));
      box.appendChild(label);
    });
  }

  // ----------------------------------------------------------------- basemap
  function setBasemap(map, on) {
    try { window.localStorage.setItem(BASEMAP_KEY, on ? "1" : ""); } catch (e) { /* ignore */ }
    if (on && !map.getSource("osm")) {
      map.addSource("osm", {
        type: "raster", tileSize: 256, maxzoom: 19,
        tiles: ["https://tile.openstreetmap.org/{z}/{x}/{y}.png"],
        attribution: "© OpenStreetMap contributors",
      });
      map.addLayer({ id: "osm", type: "raster", source: "osm",
        paint: { "raster-opacity": 0.8 } }, "settlements-fill");
    } else if (!on && map.getSource("osm")) {
      map.removeLayer("osm");
      map.removeSource("osm");
    }
  }

  // ------------------------------------------------------------------ popups
  var HIDDEN_KEYS = { id: true };

  function popupHtml(collection, feature) {
    var props = feature.properties || {};
    var id = props.id !== undefined ? props.id : feature.id;
    var title = {
      structures: "Structure " + (props.structure_number || "#" + id),
      settlements: props.name || "Settlement " + id,
      facilities: (props.name || (props.type || "facility").replace(/_/g, " ")),
      traces: props.name || "Trace " + id,
    }[collection] || collection + " " + id;
    var rows = [["collection", escapeHtml(collection)], ["id", escapeHtml(id)]];
    Object.keys(props).forEach(function (key) {
      var settlement = key === "settlement_id" ? settlements[props[key]] : undefined;
      if (settlement) {  // its name, not its number
        rows.push(["settlement", escapeHtml(settlement.feature.properties.name)]);
      } else if (!HIDDEN_KEYS[key]) {
        rows.push([key.replace(/_/g, " "), formatNumber(props[key])]);
      }
    });
    var html = '<div class="popup"><h3>' + escapeHtml(title) + "</h3>" + table(rows);
    if (collection === "traces") {
      html += '<p><a href="/traces/' + encodeURIComponent(id) + '/gpx">GPX</a> · ' +
        '<a href="/traces/' + encodeURIComponent(id) + '/geojson">GeoJSON</a></p>';
    } else {
      var history = "/collections/" + collection + "/items/" + encodeURIComponent(id) + "/history";
      html += '<p><a class="history" target="_blank" rel="noopener" href="' + history +
        '">History of this feature</a></p><ol class="history-list" hidden></ol>';
    }
    if (collection === "structures" && props.structure_number === undefined) {
      html += '<p class="muted">Zoom in for the structure\'s details.</p>';
    }
    return html + "</div>";
  }

  function showHistory(popup, link) {
    // With a token the history is shown in place (it needs viewer+); else the link opens it.
    if (!token()) { return false; }
    api(link.getAttribute("href")).then(function (data) {
      var list = popup.getElement().querySelector(".history-list");
      list.innerHTML = (data.versions || []).map(function (v) {
        return "<li>v" + escapeHtml(v.version) + " " + escapeHtml(v.action) + " by " +
          escapeHtml(v.changed_by || "?") + ", " + escapeHtml(String(v.changed_at).slice(0, 16)) +
          "</li>";
      }).join("") || "<li>no history</li>";
      list.hidden = false;
    }).catch(function (error) { say("History: " + error.message); });
    return true;
  }

  // The one open popup: closed by Escape and when another settlement is picked.
  var openPopup = null;
  function closePopup() {
    if (openPopup) { openPopup.remove(); openPopup = null; }
  }
  document.addEventListener("keydown", function (event) {
    if (event.key === "Escape") { closePopup(); }
  });

  function onClick(map, event) {
    var layers = CLICKABLE.filter(function (id) {
      return map.getLayer(id) && map.getLayoutProperty(id, "visibility") !== "none";
    });
    var box = [[event.point.x - 3, event.point.y - 3], [event.point.x + 3, event.point.y + 3]];
    var features = map.queryRenderedFeatures(box, { layers: layers });
    if (!features.length) { return; }
    // The first feature in CLICKABLE order: points and lines above structures above areas.
    features.sort(function (a, b) {
      return CLICKABLE.indexOf(a.layer.id) - CLICKABLE.indexOf(b.layer.id);
    });
    var feature = features[0];
    var collection = COLLECTION_OF_LAYER[feature.layer.id];
    closePopup();
    var popup = new maplibregl.Popup({ maxWidth: "300px" })
      .setLngLat(event.lngLat)
      .setHTML(popupHtml(collection, feature))
      .addTo(map);
    openPopup = popup;
    var link = popup.getElement().querySelector("a.history");
    if (link) {
      link.addEventListener("click", function (e) {
        if (showHistory(popup, link)) { e.preventDefault(); }
      });
    }
  }

  // ------------------------------------------------------ settlement picker
  function loadSettlements(map) {
    return api("/collections/settlements/items?limit=" + PAGE_LIMIT).then(function (fc) {
      var picker = $("settlement-picker");
      var features = (fc.features || []).slice().sort(function (a, b) {
        return String(a.properties.name).localeCompare(String(b.properties.name));
      });
      features.forEach(function (feature) {
        var box = bboxOf(feature.geometry);
        settlements[feature.id] = { feature: feature, bbox: box };
        var option = document.createElement("option");
        option.value = feature.id;
        option.textContent = feature.properties.name + " (" + feature.properties.status + ")";
        picker.appendChild(option);
        var el = document.createElement("div");
        el.className = "settlement-label";
        var dot = document.createElement("span");
        dot.className = "dot";
        dot.style.background = STATUS_COLOURS[feature.properties.status] || "#868e96";
        el.appendChild(dot);
        el.appendChild(document.createTextNode(feature.properties.name));
        var lngLat = [(box[0] + box[2]) / 2, (box[1] + box[3]) / 2];
        labels.push({
          id: String(feature.id), el: el, lngLat: lngLat,
          size: (box[2] - box[0]) * (box[3] - box[1]),
          marker: new maplibregl.Marker({ element: el }).setLngLat(lngLat).addTo(map),
        });
      });
      placeLabels(map);
      map.on("moveend", function () { placeLabels(map); });
      map.on("resize", function () { placeLabels(map); });
    }).catch(function (error) {
      say("Settlements could not be listed: " + error.message);
    });
  }

  // ------------------------------------------------------ what the map shows
  // The part of the map no panel covers: the side panel on a wide screen, the
  // bottom sheet on a phone. Camera moves fit what they show into it.
  function openArea() {
    var width = $("map").clientWidth;
    var height = $("map").clientHeight;
    var area = { left: 0, top: 0, right: width, bottom: height };
    var panel = $("panel");
    if (panel.classList.contains("closed")) { return area; }
    var rect = panel.getBoundingClientRect();
    if (rect.width >= width * 0.9) {
      area.bottom = Math.max(height * 0.3, rect.top);     // bottom sheet
    } else {
      area.left = Math.min(width * 0.7, rect.right);      // side panel
    }
    return area;
  }

  function fitPadding(margin) {
    var area = openArea();
    var el = $("map");
    return {
      top: area.top + margin, left: area.left + margin,
      right: el.clientWidth - area.right + margin, bottom: el.clientHeight - area.bottom + margin,
    };
  }

  // Settlement names are HTML markers, so MapLibre does not keep them apart: place them
  // here, the largest settlement (or the picked one) first, each shown only where it
  // fits inside the open area without touching a name already placed (at its point,
  // else just above or below), nudged back inside when its point is visible but its
  // text would run off the edge.
  function placeLabels(map) {
    var open = openArea();
    var area = { left: open.left + 4, top: open.top + 4, right: open.right - 4,
      bottom: open.bottom - 4 };
    var placed = [];
    var order = labels.slice().sort(function (a, b) {
      var picked = selectedSettlement ? String(selectedSettlement.feature.id) : null;
      if (a.id === picked) { return -1; }
      if (b.id === picked) { return 1; }
      return b.size - a.size;
    });
    order.forEach(function (label) {
      label.el.style.visibility = "hidden";
      if (label.el.hidden) { return; }
      var point = map.project(label.lngLat);
      var w = label.el.offsetWidth;
      var h = label.el.offsetHeight;
      if (point.x < area.left || point.x > area.right || point.y < area.top ||
          point.y > area.bottom || w > area.right - area.left) {
        return;
      }
      var dx = Math.max(area.left - (point.x - w / 2), 0) -
        Math.max(point.x + w / 2 - area.right, 0);
      var dy = Math.max(area.top - (point.y - h / 2), 0) -
        Math.max(point.y + h / 2 - area.bottom, 0);
      // where it stands, else just above or below it
      var rect = null;
      [0, -(h + 3), h + 3].some(function (shift) {
        var candidate = { x: point.x + dx - w / 2, y: point.y + dy + shift - h / 2, w: w, h: h };
        var clash = candidate.y < area.top || candidate.y + h > area.bottom ||
          placed.some(function (o) {
            return candidate.x < o.x + o.w + 4 && o.x < candidate.x + candidate.w + 4 &&
              candidate.y < o.y + o.h + 2 && o.y < candidate.y + candidate.h + 2;
          });
        if (!clash) { rect = candidate; dy += shift; }
        return !clash;
      });
      if (rect === null) { return; }
      placed.push(rect);
      label.marker.setOffset([dx, dy]);
      label.el.style.visibility = "visible";
    });
  }

  function pickSettlement(map, id) {
    closePopup();  // it belonged to the view being left
    selectedSettlement = id ? settlements[id] : null;
    $("summary").hidden = !selectedSettlement;
    $("download").hidden = !selectedSettlement;
    $("download-status").textContent = "";
    if (!selectedSettlement) { return; }
    var box = selectedSettlement.bbox;
    showSummary(id);
    // the summary changes the bottom sheet's height: fit once it is drawn
    window.requestAnimationFrame(function () {
      map.fitBounds([[box[0], box[1]], [box[2], box[3]]],
        { padding: fitPadding(30), duration: 600 });
    });
  }

  function showSummary(id) {
    var panel = $("summary");
    panel.innerHTML = '<span class="muted">Loading summary…</span>';
    api("/settlements/" + encodeURIComponent(id) + "/summary").then(function (s) {
      if (selectedSettlement === null || String(selectedSettlement.feature.id) !== String(id)) {
        return;
      }
      var hidden = s.suppressed || [];
      // a hidden small count reads "<5", not "—" (which reads as none or unknown)
      hidden.forEach(function (path) {
        var parts = path.split("."), last = parts.pop(), owner = s;
        parts.forEach(function (part) { owner = owner && owner[part]; });
        if (owner && owner[last] === null) { owner[last] = "<5"; }
      });
      var rows = [];
      [["area_m2", "area (ha)", function (v) { return formatNumber(v / 10000); }],
        ["structures", "structures"], ["households", "households"], ["people", "people"],
        ["density_structures_per_ha", "structures per ha"],
        ["structures_by_use", "structures by use"],
        ["facilities_by_type", "facilities by type"]].forEach(function (spec) {
        if (spec[0] in s) {
          var value = s[spec[0]];
          rows.push([spec[1], spec[2] && value !== null ? spec[2](value) : formatNumber(value)]);
        }
      });
      var note = hidden.length ? '<p class="muted" title="' + escapeHtml(hidden.join(", ")) +
        '">' + hidden.length + " small count" + (hidden.length > 1 ? "s" : "") +
        " hidden (fewer than 5; sign in to see more).</p>" : "";
      panel.innerHTML = table(rows) + note;
    }).catch(function (error) {
      panel.innerHTML = '<span class="muted">Summary not available (' +
        escapeHtml(error.status || error.message) + ").</span>";
    });
  }

  // ---------------------------------------------------------------- download
  function visibleSettlementId(map) {
    if (selectedSettlement) { return selectedSettlement.feature.id; }
    var centre = map.project(map.getCenter());
    var hits = map.queryRenderedFeatures(centre, { layers: ["settlements-fill"] });
    return hits.length ? (hits[0].properties.id || hits[0].id) : null;
  }

  function download(map, collection) {
    var id = visibleSettlementId(map);
    var status = $("download-status");
    if (!id) { status.textContent = "Pick a settlement first."; return; }
    var url = "/collections/" + collection + "/items?settlement_id=" + encodeURIComponent(id) +
      "&limit=" + PAGE_LIMIT;
    var parts = [];
    var count = 0;
    var pages = 0;
    status.textContent = "Downloading " + collection + "…";

    function page(next) {
      return api(next).then(function (data) {
        var features = data.type === "Feature" ? [data] : (data.features || []);
        features.forEach(function (f) { parts.push(JSON.stringify(f)); });
        count += features.length;
        pages += 1;
        status.textContent = "Downloading " + collection + "… " + count.toLocaleString();
        var more = (data.links || []).filter(function (l) { return l.rel === "next"; })[0];
        if (more && pages < MAX_DOWNLOAD_PAGES) { return page(more.href); }
        return null;
      });
    }

    var first = collection === "settlements" ?
      api("/collections/settlements/items/" + encodeURIComponent(id)).then(function (f) {
        parts.push(JSON.stringify(f)); count = 1;
      }) : page(url);
    first.then(function () {
      var blob = new Blob(['{"type":"FeatureCollection","features":[', parts.join(","), "]}"],
        { type: "application/geo+json" });
      var a = document.createElement("a");
      a.href = URL.createObjectURL(blob);
      a.download = "settlement-" + id + "-" + collection + ".geojson";
      document.body.appendChild(a);
      a.click();
      window.setTimeout(function () { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
      status.textContent = count.toLocaleString() + " " + collection + " saved.";
    }).catch(function (error) {
      status.textContent = "Download failed: " + error.message;
    });
  }

  // -------------------------------------------------------------- sign-in
  function refreshSignIn() {
    var signedIn = !!token();
    $("signed-in").hidden = !signedIn;
    $("signed-out").hidden = signedIn;
  }

  // ----------------------------------------------------------- GPX upload
  function newKey() {
    if (window.crypto && window.crypto.randomUUID) { return window.crypto.randomUUID(); }
    return String(Date.now()) + "-" + String(Math.random()).slice(2);
  }

  function uploadGpx(map, file) {
    var out = $("upload-result");
    if (!token()) {
      out.innerHTML = '<span class="error">Sign in with your mapper token to upload.</span>';
      $("panel").classList.remove("closed");
      document.body.classList.remove("panel-closed");
      $("token-input").focus();
      return Promise.resolve(null);
    }
    var visibility = $("trace-visibility").value;
    var query = "?name=" + encodeURIComponent(file.name.replace(/\.gpx$/i, "")) +
      "&visibility=" + encodeURIComponent(visibility);
    out.textContent = "Uploading " + file.name + "…";
    return file.arrayBuffer().then(function (bytes) {
      return api("/traces" + query, {
        method: "POST",
        body: bytes,
        headers: { "Content-Type": "application/gpx+xml", "Idempotency-Key": newKey() },
      });
    }).then(function (trace) {
      showUpload(trace);
      return api("/traces/" + encodeURIComponent(trace.id) + "/geojson").then(function (geo) {
        drawUpload(map, geo, trace);
        return trace;
      });
    }).catch(function (error) {
      var details = "";
      if (error.body && error.body.errors) {
        details = "<ul>" + error.body.errors.slice(0, 5).map(function (e) {
          return "<li>" + escapeHtml(e.reason || JSON.stringify(e)) + "</li>";
        }).join("") + "</ul>";
      }
      out.innerHTML = '<span class="error">Upload failed (' + escapeHtml(error.status || "") +
        "): " + escapeHtml(error.message) + "</span>" + details;
      return null;
    });
  }

  function showUpload(trace) {
    var stats = trace.stats || {};
    var rows = [
      ["trace", escapeHtml("#" + trace.id + " " + (trace.name || ""))],
      ["visibility", escapeHtml(trace.visibility || "")],
      ["points", formatNumber(stats.points)],
      ["tracks / segments", formatNumber(stats.tracks) + " / " + formatNumber(stats.segments)],
      ["length (m)", formatNumber(stats.length_m)],
      ["duration (s)", formatNumber(stats.duration_s)],
    ];
    var dropped = (trace.dropped || []).filter(function (d) { return d.count; });
    var droppedHtml = dropped.length ? "<b>Dropped points</b><ul>" + dropped.map(function (d) {
      return "<li>" + escapeHtml(d.reason) + ": " + formatNumber(d.count) + "</li>";
    }).join("") + "</ul>" : "<p>No points dropped.</p>";
    var warnings = (trace.warnings || []).map(function (w) {
      return "<li>" + escapeHtml(typeof w === "string" ? w : (w.message || JSON.stringify(w))) +
        "</li>";
    }).join("");
    $("upload-result").innerHTML = '<p class="ok">Uploaded.</p>' + table(rows) + droppedHtml +
      (warnings ? "<b>Warnings</b><ul>" + warnings + "</ul>" : "");
  }

  function drawUpload(map, geo, trace) {
    var fc = geo.type === "FeatureCollection" ? geo :
      { type: "FeatureCollection", features: [geo.type === "Feature" ? geo :
        { type: "Feature", geometry: geo, properties: {} }] };
    fc.features.forEach(function (f) {
      f.properties = Object.assign({ id: trace.id, name: trace.name }, f.properties || {});
    });
    map.getSource("uploaded").setData(fc);
    var box = [Infinity, Infinity, -Infinity, -Infinity];
    fc.features.forEach(function (f) {
      if (!f.geometry) { return; }
      var b = bboxOf(f.geometry);
      box = [Math.min(box[0], b[0]), Math.min(box[1], b[1]),
        Math.max(box[2], b[2]), Math.max(box[3], b[3])];
    });
    if (isFinite(box[0])) {
      map.fitBounds([[box[0], box[1]], [box[2], box[3]]],
        { padding: fitPadding(40), maxZoom: 18, duration: 500 });
    }
  }

  function dragAndDrop(map) {
    var overlay = $("drop-overlay");
    var depth = 0;
    function hasFiles(e) {
      return e.dataTransfer && Array.prototype.indexOf.call(e.dataTransfer.types, "Files") >= 0;
    }
    window.addEventListener("dragenter", function (e) {
      if (!hasFiles(e)) { return; }
      depth += 1; overlay.hidden = false; e.preventDefault();
    });
    window.addEventListener("dragleave", function () {
      depth = Math.max(0, depth - 1); if (!depth) { overlay.hidden = true; }
    });
    window.addEventListener("dragover", function (e) {
      if (hasFiles(e)) { e.preventDefault(); e.dataTransfer.dropEffect = "copy"; }
    });
    window.addEventListener("drop", function (e) {
      if (!hasFiles(e)) { return; }
      e.preventDefault();
      depth = 0; overlay.hidden = true;
      var file = e.dataTransfer.files[0];
      if (file) { uploadGpx(map, file); }
    });
    $("gpx-file").addEventListener("change", function (e) {
      var file = e.target.files[0];
      if (file) { uploadGpx(map, file); }
      e.target.value = "";
    });
  }

  // -------------------------------------------------------------------- main
  function panelToggle() {
    var button = $("panel-toggle");
    var panel = $("panel");
    function set(open) {
      panel.classList.toggle("closed", !open);
      document.body.classList.toggle("panel-closed", !open);
      button.setAttribute("aria-expanded", String(open));
      if (window.makaziMap && window.makaziReady) { placeLabels(window.makaziMap); }
    }
    if (window.matchMedia && window.matchMedia("(max-width: 700px)").matches) { set(false); }
    button.addEventListener("click", function () { set(panel.classList.contains("closed")); });
  }

  function start() {
    var origin = window.location.origin;
    var tilejsonUrl = origin + "/tiles/tilejson.json";
    legend();
    panelToggle();
    refreshSignIn();
    api("/tiles/tilejson.json").then(function (tj) {
      var map = new maplibregl.Map({
        container: "map",
        style: style(tilejsonUrl),
        bounds: tj.bounds && tj.bounds[0] > -180 ? [[tj.bounds[0], tj.bounds[1]],
          [tj.bounds[2], tj.bounds[3]]] : undefined,
        fitBoundsOptions: { padding: fitPadding(30) },
        hash: true,
        maxZoom: 21,
        attributionControl: { compact: true, customAttribution: "Makazi" },
        transformRequest: function (url) {
          // The token goes to this server only, never to a basemap host.
          if (sameOrigin(url) && token()) {
            return { url: url, headers: { Authorization: "Bearer " + token() } };
          }
          return { url: url };
        },
      });
      window.makaziMap = map;
      map.addControl(new maplibregl.NavigationControl({ visualizePitch: false }), "top-right");
      map.addControl(new maplibregl.ScaleControl({ unit: "metric" }), "bottom-right");
      map.addControl(new maplibregl.GeolocateControl({ trackUserLocation: true }), "top-right");
      map.on("error", function (e) {
        var message = e && e.error && e.error.message;
        if (message) { console.warn("map:", message); }
      });
      map.on("load", function () {
        layerToggles(map);
        var basemap = $("basemap-toggle");
        try { basemap.checked = window.localStorage.getItem(BASEMAP_KEY) === "1"; }
        catch (e) { basemap.checked = false; }
        if (basemap.checked) { setBasemap(map, true); }
        basemap.addEventListener("change", function () { setBasemap(map, basemap.checked); });
        map.on("click", function (e) { onClick(map, e); });
        CLICKABLE.forEach(function (id) {
          map.on("mouseenter", id, function () { map.getCanvas().style.cursor = "pointer"; });
          map.on("mouseleave", id, function () { map.getCanvas().style.cursor = ""; });
        });
        loadSettlements(map).then(function () { window.makaziReady = true; });
      });
      $("settlement-picker").addEventListener("change", function (e) {
        pickSettlement(map, e.target.value);
      });
      Array.prototype.forEach.call(document.querySelectorAll("#download button"), function (b) {
        b.addEventListener("click", function () { download(map, b.dataset.collection); });
      });
      dragAndDrop(map);
    }).catch(function (error) {
      say("The map could not start: " + error.message);
    });

    $("signed-out").addEventListener("submit", function (e) {
      e.preventDefault();
      var value = $("token-input").value.trim();
      if (!value) { return; }
      try { window.localStorage.setItem(TOKEN_KEY, value); } catch (err) { say("Cannot store."); }
      $("token-input").value = "";
      refreshSignIn();
    });
    $("token-clear").addEventListener("click", function () {
      try { window.localStorage.removeItem(TOKEN_KEY); } catch (e) { /* ignore */ }
      refreshSignIn();
    });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
