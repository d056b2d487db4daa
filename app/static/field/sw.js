/* Makazi field app service worker: keeps the app's files so /field opens with no network.
 *
 * Scope /field (the server sends Service-Worker-Allowed).  Only the app shell is
 * cached here (the page, its script and style, MapLibre and the PMTiles reader, the
 * icons, the settings); settlement data (features and the tile archive, a Blob) lives
 * in IndexedDB, and API answers (households above all) are never put in Cache Storage.  Shell files are served from the cache at once and
 * refreshed in the background, so a slow or expensive connection never delays the
 * start; a new version of the app is picked up on the next start.
 */
"use strict";

var SHELL = "makazi-field-shell-v2";
var FILES = [
  "/field",
  "/field/field.js",
  "/field/field.css",
  "/field/manifest.webmanifest",
  "/field/icon.svg",
  "/field/icon-192.png",
  "/field/icon-512.png",
  "/field/config.json",
  "/static/vendor/maplibre-gl.js",
  "/static/vendor/maplibre-gl.css",
  "/static/vendor/pmtiles/pmtiles.js"
];

self.addEventListener("install", function (event) {
  event.waitUntil(
    caches.open(SHELL).then(function (cache) { return cache.addAll(FILES); })
      .then(function () { return self.skipWaiting(); })
  );
});

self.addEventListener("activate", function (event) {
  event.waitUntil(
    caches.keys().then(function (names) {
      return Promise.all(names.filter(function (name) {
        return name.indexOf("makazi-field-shell-") === 0 && name !== SHELL;
      }).map(function (name) { return caches.delete(name); }));
    }).then(function () { return self.clients.claim(); })
  );
});

self.addEventListener("fetch", function (event) {
  var request = event.request;
  if (request.method !== "GET") { return; }
  var url = new URL(request.url);
  if (url.origin !== self.location.origin || FILES.indexOf(url.pathname) < 0) { return; }
  var key = url.pathname;  // one entry per file, whatever the query string
  event.respondWith(
    caches.open(SHELL).then(function (cache) {
      return cache.match(key).then(function (cached) {
        var fresh = fetch(request).then(function (response) {
          if (response.ok) { return cache.put(key, response.clone()).then(function () { return response; }); }
          return response;
        });
        if (cached) {
          event.waitUntil(fresh.catch(function () { return null; }));
          return cached;
        }
        return fresh;
      });
    })
  );
});
