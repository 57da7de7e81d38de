// The book's "Sign in with …" example page (docs/examples/sign-in.html) in headless
// Chromium against a real OpenID Provider:
//   node tests/browser/provider-sign-in.mjs API_URL APP_PORT USER
// The script serves the page at http://localhost:APP_PORT/sign-in.html (pointed at
// API_URL), clicks the provider's button, signs in at the provider as USER and consents,
// and waits for the page to say who is signed in.
// Prints one JSON line with what it saw; exits non-zero with the reason on failure.
import fs from "node:fs";
import http from "node:http";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const [api, appPort, user] = process.argv.slice(2);
if (!api || !appPort || !user) {
  console.error("usage: provider-sign-in.mjs API_URL APP_PORT USER");
  process.exit(2);
}
const executablePath = process.env.CHROMIUM ?? "/usr/bin/chromium";
const here = path.dirname(fileURLToPath(import.meta.url));
const page = fs
  .readFileSync(path.join(here, "../../docs/examples/sign-in.html"), "utf8")
  .replace('data-api="http://localhost:8080"', `data-api="${api}"`);
const app = http.createServer((req, res) => {
  if (!req.url.startsWith("/sign-in.html")) {
    res.writeHead(404).end();
    return;
  }
  res.writeHead(200, { "content-type": "text/html" });
  res.end(page);
});
await new Promise((resolve) => app.listen(Number(appPort), "127.0.0.1", resolve));

const failures = [];
const check = (ok, message) => ok || failures.push(message);
const browser = await chromium.launch({ executablePath, args: ["--no-sandbox"] });
const seen = {};
try {
  const context = await browser.newContext();
  const tab = await context.newPage();
  await tab.goto(`http://localhost:${appPort}/sign-in.html`);
  const button = tab.getByText("Sign in with Test OP");
  await button.waitFor({ timeout: 10000 });
  await button.click();

  // The provider's own pages: sign in, then consent.
  await tab.waitForSelector('input[name="login"]', { timeout: 10000 });
  // Scoped to the flow's routes, so asked for by one of them.
  const flowCookie = (await context.cookies(`${api}/api/auth/oauth/test/callback`))
    .find((c) => c.name === "__Secure-stoa-oauth");
  seen.flowCookie = flowCookie && { httpOnly: flowCookie.httpOnly, secure: flowCookie.secure, sameSite: flowCookie.sameSite };
  await tab.fill('input[name="login"]', user);
  await tab.fill('input[name="password"]', "any");
  await tab.click('button[type="submit"]');
  await tab.waitForLoadState();
  if (!tab.url().startsWith(`http://localhost:${appPort}/`)) {
    await tab.click('button[type="submit"]'); // consent
  }

  await tab.waitForFunction(
    () => document.getElementById("status").textContent.startsWith("Signed in as"),
    null,
    { timeout: 15000 },
  ).catch(() => {});
  seen.status = await tab.textContent("#status");
  seen.error = await tab.textContent("#error");
  seen.url = tab.url();
  check(seen.status === `Signed in as ${user}`, `the page says ${JSON.stringify(seen.status)} (error: ${JSON.stringify(seen.error)})`);
  check(!seen.url.includes("stoa_code"), `the one-time code stayed in the address bar: ${seen.url}`);
  check(seen.flowCookie?.httpOnly && seen.flowCookie?.sameSite === "Lax",
    `flow cookie: ${JSON.stringify(seen.flowCookie)}`);
  if (failures.length) {
    console.error(`FAIL: ${failures.join("; ")}`);
    process.exitCode = 1;
  }
  console.log(JSON.stringify(seen));
} finally {
  await browser.close();
  app.close();
}
