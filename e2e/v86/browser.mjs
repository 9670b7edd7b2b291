// Boots the tapwire test guest under v86 in headless Chromium (Debian's chromium, driven by
// puppeteer-core: no browser download), from a page served on loopback by this script.
// Usage: node browser.mjs --relay URL --nic ne2k|virtio --host IP --page-port N
//          [--page-host 127.0.0.1|localhost] [--spki BASE64] [--timeout 240]
// --spki trusts the certificate whose public key has this SHA-256 (a self-signed wss:// relay).
// The page first opens a probe WebSocket to the relay and prints TW-WS-OPEN or TW-WS-ERROR
// (a relay that refuses the upgrade: wrong Origin, missing or expired token), then boots the
// guest. Every serial line goes to stdout; exits 1 on TW-FAIL or TW-WS-ERROR, 2 on timeout.
import { createServer } from "node:http";
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { createRequire } from "node:module";
import puppeteer from "puppeteer-core";

const here = dirname(fileURLToPath(import.meta.url));
const require = createRequire(import.meta.url);
const v86build = join(dirname(require.resolve("v86/package.json")), "build");
const args = Object.fromEntries(
  process.argv.slice(2).reduce((acc, arg, i, all) => (arg.startsWith("--") ? [...acc, [arg.slice(2), all[i + 1]]] : acc), []),
);
const timeout = Number(args.timeout ?? 240);
const pagePort = Number(args["page-port"] ?? 8000);
const pageHost = args["page-host"] ?? "127.0.0.1";

const page = `<!doctype html><meta charset="utf-8"><title>tapwire v86</title>
<script src="/libv86.js"></script>
<script>
const q = new URLSearchParams(location.search);
const relay = q.get("relay"), nic = q.get("nic"), host = q.get("host");
const probe = new WebSocket(relay);
probe.binaryType = "arraybuffer";
probe.onerror = () => window.serialLine("TW-WS-ERROR");
probe.onopen = () => { window.serialLine("TW-WS-OPEN"); probe.close(); boot(); };
function boot() {
  const emulator = new V86({
    wasm_path: "/v86.wasm",
    memory_size: 128 * 1024 * 1024,
    vga_memory_size: 2 * 1024 * 1024,
    bios: { url: "/cache/bios.bin" },
    vga_bios: { url: "/cache/vgabios.bin" },
    bzimage: { url: "/cache/bzImage" },
    initrd: { url: "/cache/initrd.gz" },
    cmdline: "console=ttyS0 cryptomgr.notests=1 quiet loglevel=3 tw.nic=" + nic + " tw.host=" + host,
    net_device: { type: nic, relay_url: relay },
    autostart: true,
    disable_keyboard: true,
    disable_mouse: true,
    disable_speaker: true,
  });
  let line = "";
  emulator.add_listener("serial0-output-byte", (byte) => {
    const ch = String.fromCharCode(byte);
    if (ch === "\\n") { window.serialLine(line.replace(/\\r$/, "")); line = ""; } else { line += ch; }
  });
}
</script>`;

const files = {
  "/libv86.js": [join(v86build, "libv86.js"), "text/javascript"],
  "/v86.wasm": [join(v86build, "v86.wasm"), "application/wasm"],
  "/cache/bios.bin": [join(here, "cache", "bios.bin"), "application/octet-stream"],
  "/cache/vgabios.bin": [join(here, "cache", "vgabios.bin"), "application/octet-stream"],
  "/cache/bzImage": [join(here, "cache", "bzImage"), "application/octet-stream"],
  "/cache/initrd.gz": [join(here, "cache", "initrd.gz"), "application/octet-stream"],
};
const server = createServer((req, res) => {
  const path = req.url.split("?")[0];
  if (path === "/") {
    res.writeHead(200, { "Content-Type": "text/html" });
    res.end(page);
  } else if (files[path]) {
    res.writeHead(200, { "Content-Type": files[path][1] });
    res.end(readFileSync(files[path][0]));
  } else {
    res.writeHead(404);
    res.end();
  }
});
await new Promise((ok) => server.listen(pagePort, "127.0.0.1", ok));

const browser = await puppeteer.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  headless: true,
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    // wss:// to a relay with a self-signed certificate: trust exactly its key.
    ...(args.spki ? [`--ignore-certificate-errors-spki-list=${args.spki}`] : []),
  ],
});
const finish = async (code) => {
  await browser.close().catch(() => {});
  server.close();
  process.exit(code);
};
const tab = await browser.newPage();
await tab.exposeFunction("serialLine", (text) => {
  process.stdout.write(text + "\n");
  if (text.startsWith("TW-FAIL") || text === "TW-WS-ERROR") finish(1);
});
const url = `http://${pageHost}:${pagePort}/?relay=${encodeURIComponent(args.relay)}&nic=${args.nic ?? "ne2k"}&host=${args.host ?? "10.86.0.1"}`;
await tab.goto(url);
setTimeout(() => {
  process.stdout.write(`TW-TIMEOUT after ${timeout}s\n`);
  finish(2);
}, timeout * 1000);
