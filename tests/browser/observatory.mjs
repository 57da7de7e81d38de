// Grades a live stoa-api with Mozilla's HTTP Observatory (npm @mdn/mdn-http-observatory,
// the scanner behind developer.mozilla.org/observatory), as an Ingress would expose it:
// a TLS terminator (this script, with the test's certificate for `localhost`) in front of
// the API, and plain http answered with a 308 to https (ingress-nginx's ssl-redirect).
//
//   node observatory.mjs <upstream http://127.0.0.1:PORT> <cert.pem> <key.pem> [path]
//
// NODE_EXTRA_CA_CERTS must name the test's CA, so the scanner verifies the certificate
// (HSTS counts only over verified https). Prints one JSON line: grade, score, and each
// test's result, pass and score modifier. The scanner's own CLI takes no ports, so this
// runs its scan() steps (retrieve, every test, the grader) with the ports given.
import fs from "node:fs";
import http from "node:http";
import https from "node:https";
import path from "node:path";

const [upstream, certFile, keyFile, page = ""] = process.argv.slice(2);
if (!upstream || !certFile || !keyFile) {
  console.error("usage: observatory.mjs <upstream-url> <cert.pem> <key.pem> [path]");
  process.exit(2);
}
const scanner = path.join(import.meta.dirname, "node_modules/@mdn/mdn-http-observatory");
// Installed with --ignore-scripts: the HSTS preload list (downloaded by its postinstall)
// is absent. `localhost` is on no preload list, so an empty one answers the same.
const preload = path.join(scanner, "conf/hsts-preload.json");
if (!fs.existsSync(preload)) {
  fs.writeFileSync(preload, "{}");
}
const { retrieve } = await import(path.join(scanner, "src/retriever/retriever.js"));
const { ALL_TESTS, NUM_TESTS } = await import(path.join(scanner, "src/constants.js"));
const { getGradeForScore, getScoreModifier } = await import(path.join(scanner, "src/grader/grader.js"));
const { MINIMUM_SCORE_FOR_EXTRA_CREDIT } = await import(path.join(scanner, "src/grader/charts.js"));

const target = new URL(upstream);
const listen = (server) =>
  new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve(server.address().port)));

const terminator = https.createServer(
  { cert: fs.readFileSync(certFile), key: fs.readFileSync(keyFile) },
  (req, res) => {
    const forward = http.request(
      {
        host: target.hostname,
        port: target.port,
        method: req.method,
        path: req.url,
        headers: { ...req.headers, "x-forwarded-proto": "https" },
      },
      (answer) => {
        res.writeHead(answer.statusCode, answer.rawHeaders);
        answer.pipe(res);
      },
    );
    forward.on("error", (e) => {
      res.writeHead(502);
      res.end(String(e));
    });
    req.pipe(forward);
  },
);
const httpsPort = await listen(terminator);
const redirect = http.createServer((req, res) => {
  res.writeHead(308, { location: `https://localhost:${httpsPort}${req.url}` });
  res.end();
});
const httpPort = await listen(redirect);

const retrieved = await retrieve("localhost", { httpPort, httpsPort, path: page });
if (!retrieved.responses.auto) {
  console.log(JSON.stringify({ error: "the site could not be reached" }));
  process.exit(1);
}
// As the scanner's scan(): every test, then the score with extra credit only for a site
// that already earns an A without it.
let withCredit = 100;
let uncurved = 100;
const tests = {};
for (const test of ALL_TESTS) {
  const output = test(retrieved);
  const modifier = getScoreModifier(output.result);
  withCredit += modifier;
  if (modifier < 0) {
    uncurved += modifier;
  }
  tests[output.constructor.name] = { result: output.result, pass: output.pass, modifier };
}
const score = uncurved >= MINIMUM_SCORE_FOR_EXTRA_CREDIT ? withCredit : uncurved;
const grade = getGradeForScore(score);
console.log(
  JSON.stringify({
    grade: grade.grade,
    score: grade.score,
    status: retrieved.responses.auto.status,
    testsPassed: Object.values(tests).filter((t) => t.pass).length,
    testsQuantity: NUM_TESTS,
    tests,
  }),
);
terminator.close();
redirect.close();
process.exit(0);
