// 32-bit MicroPython heap figures for the firmware (bench_ram32.py runs this under node).
//
// The WebAssembly port (npm @micropython/micropython-webassembly-pyscript) is
// a 32-bit MicroPython: object and bytecode sizes are what an ESP32 pays, not
// the 64-bit unix port's. Its heap grows on demand (split heap), so figures
// are gc.mem_alloc() deltas after gc.collect(), never a heap cap.
//
// argv: <micropython.mjs> <firmware .mpy dir> <stubs dir> <device root files dir>
// prints one JSON line.
import fs from "fs";
import path from "path";

const [mjs, mpyDir, stubDir, rootDir] = process.argv.slice(2);
const { loadMicroPython } = await import(mjs);
let out = "";
const mp = await loadMicroPython({
  heapsize: 256 * 1024, // the first heap area; more are added as needed
  stdout: (t) => { out += t + "\n"; },
  stderr: (t) => { out += t + "\n"; },
});

function copyTree(src, dst) {
  try { mp.FS.mkdir(dst); } catch (e) { /* exists */ }
  for (const name of fs.readdirSync(src)) {
    const s = path.join(src, name);
    const d = dst + "/" + name;
    if (fs.statSync(s).isDirectory()) copyTree(s, d);
    else mp.FS.writeFile(d, fs.readFileSync(s));
  }
}
copyTree(mpyDir, "/fw");
copyTree(stubDir, "/stubs");
copyTree(rootDir, "/dev0");

const script = fs.readFileSync(new URL("./heap_mpy.py", import.meta.url), "utf8");
try {
  const prelude = 'FW = "/fw"\nSTUBS = "/stubs"\nROOT = "/dev0"\n';
  await mp.runPythonAsync(prelude + script + "\nawait main()\n");
} catch (e) {
  out += "ERROR " + String(e).split("\n").slice(-3).join(" ") + "\n";
}
const line = out.split("\n").find((l) => l.startsWith("J "));
console.log(line ? line.slice(2) : JSON.stringify({ error: out.trim().split("\n").slice(-3).join(" | ") }));
