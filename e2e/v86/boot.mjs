// Boots the tapwire test guest under v86 in Node with its NIC on a relay.
// Usage: node boot.mjs --relay ws://127.0.0.1:8086/ --nic ne2k|virtio --host 10.86.0.1 [--timeout 240]
// Prints every serial console line on stdout; forwards each stdin line to the guest's serial
// console; exits 1 on a "TW-FAIL" line and 2 when the timeout passes.
import { readFileSync } from "node:fs";
import { createInterface } from "node:readline";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { createRequire } from "node:module";
import WebSocket from "ws";

globalThis.WebSocket = WebSocket;
const here = dirname(fileURLToPath(import.meta.url));
const require = createRequire(import.meta.url);
const { V86 } = await import(join(dirname(require.resolve("v86/package.json")), "build", "libv86.mjs"));

const args = Object.fromEntries(
  process.argv.slice(2).reduce((acc, arg, i, all) => (arg.startsWith("--") ? [...acc, [arg.slice(2), all[i + 1]]] : acc), []),
);
const nic = args.nic ?? "ne2k";
const host = args.host ?? "10.86.0.1";
const timeout = Number(args.timeout ?? 240);
const cache = join(here, "cache");
const file = (name) => ({ buffer: new Uint8Array(readFileSync(join(cache, name))).buffer });

const emulator = new V86({
  wasm_path: join(dirname(require.resolve("v86/package.json")), "build", "v86.wasm"),
  memory_size: 128 * 1024 * 1024,
  vga_memory_size: 2 * 1024 * 1024,
  bios: file("bios.bin"),
  vga_bios: file("vgabios.bin"),
  bzimage: file("bzImage"),
  initrd: file("initrd.gz"),
  cmdline: `console=ttyS0 cryptomgr.notests=1 quiet loglevel=3 tw.nic=${nic} tw.host=${host}`,
  net_device: { type: nic, relay_url: args.relay },
  autostart: true,
  disable_keyboard: true,
  disable_mouse: true,
  disable_speaker: true,
});

let line = "";
emulator.add_listener("serial0-output-byte", (byte) => {
  const ch = String.fromCharCode(byte);
  if (ch === "\n") {
    const text = line.replace(/\r$/, "");
    line = "";
    process.stdout.write(text + "\n");
    if (text.startsWith("TW-FAIL")) {
      emulator.stop();
      process.exit(1);
    }
  } else {
    line += ch;
  }
});

createInterface({ input: process.stdin }).on("line", (l) => emulator.serial0_send(l + "\n"));
setTimeout(() => {
  process.stdout.write(`TW-TIMEOUT after ${timeout}s\n`);
  process.exit(2);
}, timeout * 1000);
