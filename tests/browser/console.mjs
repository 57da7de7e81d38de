// The admin console in headless Chromium: an admin signs in with a password and a TOTP
// code, reaches the overview, finds USER on the Users page and disables them; the pages
// load nothing from another origin and log no console error (a CSP violation would be
// one).
//   node tests/browser/console.mjs BASE_URL EMAIL PASSWORD CODE USER
// Prints one JSON line with what it saw; exits non-zero with the reason on failure.
import { chromium } from "playwright-core";

const [base, email, password, code, user] = process.argv.slice(2);
if (!base || !email || !password || !code || !user) {
  console.error("usage: console.mjs BASE_URL EMAIL PASSWORD CODE USER");
  process.exit(2);
}
const executablePath = process.env.CHROMIUM ?? "/usr/bin/chromium";
const origin = new URL(base).origin;
const failures = [];
const check = (ok, message) => ok || failures.push(message);
const seen = { consoleErrors: [], otherOrigins: [], pages: [] };

const browser = await chromium.launch({ executablePath, args: ["--no-sandbox"] });
try {
  const context = await browser.newContext();
  const page = await context.newPage();
  page.on("console", (message) => {
    if (message.type() === "error") seen.consoleErrors.push(message.text());
  });
  page.on("pageerror", (error) => seen.consoleErrors.push(String(error)));
  page.on("request", (request) => {
    if (new URL(request.url()).origin !== origin) seen.otherOrigins.push(request.url());
  });

  await page.goto(`${base}/admin`);
  seen.pages.push(await page.title());
  check(page.url().endsWith("/admin/login"), `not sent to sign in: ${page.url()}`);
  // By label, as a person (or a screen reader) finds the fields.
  await page.getByLabel("Email").fill(email);
  await page.getByLabel("Password").fill(password);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.waitForLoadState();
  seen.pages.push(await page.title());
  await page.getByLabel(/authenticator/).fill(code);
  await page.getByRole("button", { name: "Verify" }).click();
  await page.waitForLoadState();
  seen.pages.push(await page.title());
  seen.heading = await page.textContent("h1");
  check(seen.heading === "Overview", `landed on ${JSON.stringify(seen.heading)} at ${page.url()}`);
  const cookie = (await context.cookies(`${base}/admin`)).find((c) => c.name === "__Secure-stoa-console");
  seen.cookie = cookie && { httpOnly: cookie.httpOnly, secure: cookie.secure, sameSite: cookie.sameSite, path: cookie.path };
  check(cookie?.httpOnly && cookie?.sameSite === "Strict" && cookie?.path === "/admin",
    `session cookie: ${JSON.stringify(seen.cookie)}`);
  seen.scriptReadable = await page.evaluate(() => document.cookie.includes("stoa-console"));
  check(!seen.scriptReadable, "page scripts can read the session cookie");

  // Users: search by name, open the user, disable them.
  await page.getByRole("link", { name: "Users" }).click();
  await page.getByLabel("Name or email contains").fill(user);
  await page.getByRole("button", { name: "Search" }).click();
  await page.waitForLoadState();
  await page.getByRole("link", { name: user, exact: true }).click();
  await page.waitForLoadState();
  await page.getByRole("button", { name: "Disable the account" }).click();
  await page.waitForLoadState();
  seen.afterDisable = await page.textContent("[role=status]").catch(() => null);
  check(seen.afterDisable?.includes("disabled"), `after disabling: ${JSON.stringify(seen.afterDisable)}`);

  // Keyboard only: Tab reaches the sign-out button, Enter signs out.
  let focused = "";
  for (let i = 0; i < 10 && focused !== "Sign out everywhere"; i++) {
    await page.keyboard.press("Tab");
    focused = await page.evaluate(() => document.activeElement?.textContent?.trim() ?? "");
  }
  check(focused === "Sign out everywhere", `Tab never reached sign-out (last: ${JSON.stringify(focused)})`);
  await Promise.all([
    page.waitForURL("**/admin/login", { timeout: 10000 }).catch(() => {}),
    page.keyboard.press("Enter"),
  ]);
  seen.afterSignOut = page.url();
  check(page.url().endsWith("/admin/login"), `sign-out landed at ${page.url()}`);

  check(seen.consoleErrors.length === 0, `console errors: ${seen.consoleErrors.join(" | ")}`);
  check(seen.otherOrigins.length === 0, `requests to other origins: ${seen.otherOrigins.join(", ")}`);
  if (failures.length) {
    console.error(`FAIL: ${failures.join("; ")}`);
    process.exitCode = 1;
  }
  console.log(JSON.stringify(seen));
} finally {
  await browser.close();
}
