// The service worker: keeps the app shell (the page and its hashed files)
// so that the app opens with the network off. Task data is not its
// business: it lives in IndexedDB and syncs over the WebSocket. API calls
// and the sync socket always go to the network.
//
// The build fills in the file list and the version (see vite.config.ts).
const SHELL = ["/","/manifest.webmanifest","/icons/icon.svg","/assets/automerge-LjMxZKTS.wasm","/assets/index-BpevMD-H.css","/assets/index-DxnnVOPt.js"]
const CACHE = "codeedex-shell-89f0a503"

self.addEventListener("install", event => {
  event.waitUntil(
    caches
      .open(CACHE)
      .then(cache => cache.addAll(SHELL))
      .then(() => self.skipWaiting()),
  )
})

self.addEventListener("activate", event => {
  event.waitUntil(
    caches
      .keys()
      .then(names => Promise.all(names.filter(n => n !== CACHE).map(n => caches.delete(n))))
      .then(() => self.clients.claim()),
  )
})

self.addEventListener("fetch", event => {
  const request = event.request
  const url = new URL(request.url)
  if (request.method !== "GET" || url.origin !== self.location.origin) return
  if (url.pathname.startsWith("/v1/")) return
  if (request.mode === "navigate") {
    // The page: the network's copy when there is one (a new version is
    // picked up at once), the cached shell otherwise.
    event.respondWith(
      fetch(request).catch(() =>
        caches.match("/", { cacheName: CACHE }).then(hit => hit ?? Response.error()),
      ),
    )
    return
  }
  // Hashed files never change: the cache first, then the network.
  event.respondWith(
    caches.match(request, { cacheName: CACHE }).then(hit => hit ?? fetch(request)),
  )
})
