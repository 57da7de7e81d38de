// Drives stoa-api's documentation page in headless Chromium:
//   node tests/browser/docs-page.mjs http://127.0.0.1:PORT
// 1. every operation of the served OpenAPI document is listed on /api/docs/;
// 2. "Try it out" on GET /api/tags runs a real request against the live server and shows
//    its 200 and body;
// 3. the page raised no JavaScript error and loaded nothing from another origin (the CSP
//    allows only 'self').
// Prints one JSON line with what it saw; exits non-zero with the reason on failure.
import { chromium } from "playwright-core";

const base = process.argv[2];
if (!base) {
  console.error("usage: docs-page.mjs BASE_URL");
  process.exit(2);
}
const executablePath = process.env.CHROMIUM ?? "/usr/bin/chromium";

function fail(message) {
  console.error(`FAIL: ${message}`);
  process.exitCode = 1;
}

const document = await (await fetch(`${base}/api/openapi.json`)).json();
const expected = [];
for (const [path, item] of Object.entries(document.paths)) {
  for (const method of ["get", "put", "post", "delete", "patch"]) {
    if (item[method]) expected.push(`${method.toUpperCase()} ${path}`);
  }
}

const browser = await chromium.launch({ executablePath, args: ["--no-sandbox"] });
try {
  const page = await browser.newPage();
  const errors = [];
  const foreign = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("console", (m) => m.type() === "error" && errors.push(m.text()));
  page.on("request", (r) => {
    if (!r.url().startsWith(base) && !r.url().startsWith("data:")) foreign.push(r.url());
  });

  await page.goto(`${base}/api/docs/`, { waitUntil: "networkidle" });
  await page.waitForSelector(".opblock", { timeout: 15000 });
  const listed = await page.$$eval(".opblock", (blocks) =>
    blocks.map((b) => {
      const method = b.querySelector(".opblock-summary-method")?.textContent.trim();
      const path = b.querySelector(".opblock-summary-path")?.getAttribute("data-path");
      return `${method} ${path}`;
    }),
  );
  const missing = expected.filter((op) => !listed.includes(op));
  if (missing.length) fail(`operations not listed on the page: ${missing.join(", ")}`);

  // Try it out: GET /api/tags, against the live server.
  const tags = page.locator(".opblock-get", {
    has: page.locator('.opblock-summary-path[data-path="/api/tags"]'),
  });
  await tags.locator(".opblock-summary").click();
  await tags.getByRole("button", { name: "Try it out" }).click();
  await tags.getByRole("button", { name: "Execute" }).click();
  const status = tags.locator(".live-responses-table .response .response-col_status");
  await status.first().waitFor({ timeout: 15000 });
  const code = (await status.first().textContent()).trim();
  const body = await tags.locator(".live-responses-table .response-col_description pre").first().textContent();
  if (code !== "200") fail(`Try it out on GET /api/tags answered ${code}`);
  if (!body.includes('"tags"')) fail(`Try it out on GET /api/tags showed no tags body: ${body}`);

  if (errors.length) fail(`JavaScript errors: ${errors.join(" | ")}`);
  if (foreign.length) fail(`requests to other origins: ${foreign.join(", ")}`);
  console.log(JSON.stringify({ operations: expected.length, listed: listed.length, tryItOut: { code, body: body.trim() } }));
} finally {
  await browser.close();
}
