// The benchmark scripts' command line: `--name value` pairs, and `--name`
// alone for "true". Shared by the Node scripts under bench/.
export function parseFlags(argv = process.argv.slice(2)) {
  const pairs = [];
  argv.forEach((arg, i) => {
    if (!arg.startsWith("--")) return;
    const next = argv[i + 1];
    pairs.push([arg.slice(2), next !== undefined && !next.startsWith("--") ? next : "true"]);
  });
  return Object.fromEntries(pairs);
}
