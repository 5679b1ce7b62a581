/**
 * `bun run build`: compiles wsbridge into one executable for this machine
 * (dist/wsbridge), then cross-compiles release binaries for the targets
 * below. Bun fetches each target's runtime from the npm registry; a target
 * that cannot be fetched is reported and skipped, and the native build
 * still counts as a success.
 *
 * WSBRIDGE_BUILD_TARGETS=native builds only dist/wsbridge.
 */

const ENTRY = "src/main.ts";
const RELEASE_TARGETS = ["bun-linux-x64", "bun-linux-arm64", "bun-darwin-arm64"];

function compile(outfile: string, target?: string): { ok: boolean; output: string } {
  const args = ["build", "--compile", "--minify", "--sourcemap", ENTRY, "--outfile", outfile];
  if (target !== undefined) args.push(`--target=${target}`);
  const result = Bun.spawnSync([process.execPath, ...args], { stdout: "pipe", stderr: "pipe" });
  return { ok: result.exitCode === 0, output: `${result.stdout}${result.stderr}`.trim() };
}

const native = compile("dist/wsbridge");
if (!native.ok) {
  console.error(`build failed for dist/wsbridge:\n${native.output}`);
  process.exit(1);
}
console.log("built dist/wsbridge");

if (process.env.WSBRIDGE_BUILD_TARGETS !== "native") {
  for (const target of RELEASE_TARGETS) {
    const outfile = `dist/wsbridge-${target.replace(/^bun-/, "")}`;
    const result = compile(outfile, target);
    if (result.ok) console.log(`built ${outfile}`);
    else console.warn(`skipped ${outfile}: cross-compiling for ${target} failed (is the npm registry reachable?)\n${result.output}`);
  }
}
