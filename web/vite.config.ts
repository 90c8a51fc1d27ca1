// The web app's build. Its output, web/dist, is committed and embedded in
// the server binary (server/build.rs); a test rebuilds it and compares byte
// for byte, so the build must be reproducible: no timestamps, no random
// names, hashes from content only.
import { defineConfig, type Plugin } from "vite"
import { readFileSync, readdirSync, statSync, writeFileSync } from "node:fs"
import { join } from "node:path"
import { brotliCompressSync, constants, gzipSync } from "node:zlib"

// The service worker needs the names of the hashed files it caches for
// offline use, which exist only once the bundle is written; it is emitted
// from src/sw.js with the list filled in, at a fixed URL (/sw.js).
function serviceWorker(): Plugin {
  return {
    name: "codeedex-service-worker",
    apply: "build",
    generateBundle(_options, bundle) {
      const files = Object.keys(bundle)
        .filter(name => name.startsWith("assets/"))
        .sort()
        .map(name => "/" + name)
      const shell = ["/", "/manifest.webmanifest", "/icons/icon.svg", ...files]
      const template = readFileSync(new URL("./src/sw.js", import.meta.url), "utf8")
      // The cache name changes whenever any file does, so a new version
      // replaces the old shell as a whole.
      let hash = 0x811c9dc5
      for (const ch of files.join("\n")) hash = Math.imul(hash ^ ch.charCodeAt(0), 0x01000193) >>> 0
      const source = template
        .replace("__SHELL__", JSON.stringify(shell))
        .replace("__VERSION__", hash.toString(16).padStart(8, "0"))
      this.emitFile({ type: "asset", fileName: "sw.js", source })
    },
  }
}

// Brotli and gzip copies of every compressible file, made once here so the
// server sends them as they are (it has no compressor of its own).
function precompress(): Plugin {
  let outDir = "dist"
  return {
    name: "codeedex-precompress",
    apply: "build",
    configResolved(config) {
      outDir = config.build.outDir
    },
    closeBundle() {
      const walk = (dir: string): string[] =>
        readdirSync(dir).flatMap(name => {
          const path = join(dir, name)
          return statSync(path).isDirectory() ? walk(path) : [path]
        })
      for (const path of walk(outDir)) {
        if (!/\.(js|wasm|css|html|svg|webmanifest)$/.test(path)) continue
        const body = readFileSync(path)
        if (body.length < 1024) continue
        writeFileSync(
          path + ".br",
          brotliCompressSync(body, {
            params: {
              [constants.BROTLI_PARAM_QUALITY]: 11,
              [constants.BROTLI_PARAM_SIZE_HINT]: body.length,
            },
          }),
        )
        writeFileSync(path + ".gz", gzipSync(body, { level: 9 }))
      }
    },
  }
}

export default defineConfig({
  esbuild: { jsx: "automatic", jsxImportSource: "preact" },
  build: {
    target: "es2022",
    sourcemap: false,
    assetsInlineLimit: 0,
    modulePreload: { polyfill: false },
    reportCompressedSize: false,
  },
  plugins: [serviceWorker(), precompress()],
})
