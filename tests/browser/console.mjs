// The admin console in headless Chromium, with the CSP it is served with:
//   node tests/browser/console.mjs BASE_URL SCENARIO_JSON
// where SCENARIO_JSON is
//   {"email", "password", "code": TOTP code, "disable": username, "article": slug,
//    "comment": comment id, "deadJob": job id, "nonAdmin": {"email", "password"}}
// 1. a non-admin with the right password is refused;
// 2. the admin signs in with the password and the TOTP code (fields found by label);
// 3. finds the user `disable` and disables them; removes comment `comment` of `article`
//    with a reason; retries dead job `deadJob`;
// 4. a form posted without the session's CSRF token is refused (403);
// 5. every screen passes an axe-core scan with no serious or critical violation;
// 6. the keyboard reaches "Sign out everywhere", and Enter signs out.
// No page may log a console error (a CSP violation would be one) or ask another origin
// for anything. Prints one JSON line with what it saw; exits non-zero on failure.
import fs from "node:fs";
import { createRequire } from "node:module";
import { chromium } from "playwright-core";

const [base, scenarioJson] = process.argv.slice(2);
if (!base || !scenarioJson) {
  console.error("usage: console.mjs BASE_URL SCENARIO_JSON");
  process.exit(2);
}
const scenario = JSON.parse(scenarioJson);
const executablePath = process.env.CHROMIUM ?? "/usr/bin/chromium";
const axeSource = fs.readFileSync(createRequire(import.meta.url).resolve("axe-core/axe.min.js"), "utf8");
const origin = new URL(base).origin;
const failures = [];
const check = (ok, message) => ok || failures.push(message);
const seen = { consoleErrors: [], otherOrigins: [], axe: {} };

function watch(page, { expectRefusal = false } = {}) {
  page.on("console", (message) => {
    // A refused page is answered 403, which Chromium logs as a failed load.
    const refusal = expectRefusal && message.text().includes("status of 403");
    if (message.type() === "error" && !refusal) seen.consoleErrors.push(`${page.url()}: ${message.text()}`);
  });
  page.on("pageerror", (error) => seen.consoleErrors.push(String(error)));
  page.on("request", (request) => {
    if (new URL(request.url()).origin !== origin) seen.otherOrigins.push(request.url());
  });
}

async function signIn(page, email, password) {
  await page.goto(`${base}/admin`);
  await page.getByLabel("Email").fill(email);
  await page.getByLabel("Password").fill(password);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.waitForLoadState();
}

const browser = await chromium.launch({ executablePath, args: ["--no-sandbox"] });
try {
  // 1. A non-admin.
  {
    const context = await browser.newContext();
    const page = await context.newPage();
    watch(page, { expectRefusal: true });
    await signIn(page, scenario.nonAdmin.email, scenario.nonAdmin.password);
    seen.nonAdmin = await page.textContent("h1");
    check(seen.nonAdmin === "Not an admin", `a non-admin saw ${JSON.stringify(seen.nonAdmin)}`);
    await context.close();
  }

  // 2. The admin, with the second factor.
  const context = await browser.newContext();
  const page = await context.newPage();
  watch(page);
  await signIn(page, scenario.email, scenario.password);
  check(page.url().endsWith("/admin/login"), `the password step went to ${page.url()}`);
  await page.getByLabel(/authenticator/).fill(scenario.code);
  await page.getByRole("button", { name: "Verify" }).click();
  await page.waitForLoadState();
  seen.heading = await page.textContent("h1");
  check(seen.heading === "Overview", `landed on ${JSON.stringify(seen.heading)} at ${page.url()}`);
  const cookie = (await context.cookies(`${base}/admin`)).find((c) => c.name === "__Secure-stoa-console");
  seen.cookie = cookie && { httpOnly: cookie.httpOnly, secure: cookie.secure, sameSite: cookie.sameSite, path: cookie.path };
  check(cookie?.httpOnly && cookie?.sameSite === "Strict" && cookie?.path === "/admin",
    `session cookie: ${JSON.stringify(seen.cookie)}`);
  check(!(await page.evaluate(() => document.cookie.includes("stoa-console"))), "page scripts can read the session cookie");

  // 3. Users: search, open, disable.
  await page.getByRole("link", { name: "Users" }).click();
  await page.getByLabel("Name or email contains").fill(scenario.disable);
  await page.getByRole("button", { name: "Search" }).click();
  await page.waitForLoadState();
  await page.getByRole("link", { name: scenario.disable, exact: true }).click();
  await page.waitForLoadState();
  const userPage = page.url();
  await page.getByRole("button", { name: "Disable the account" }).click();
  await page.waitForLoadState();
  seen.afterDisable = await page.textContent("[role=status]").catch(() => null);
  check(seen.afterDisable?.includes("disabled"), `after disabling: ${JSON.stringify(seen.afterDisable)}`);

  // Articles: open the article, remove the comment with a reason.
  await page.getByRole("link", { name: "Articles" }).click();
  await page.waitForLoadState();
  const articlePage = `${base}/admin/articles/${scenario.article}`;
  await page.goto(articlePage);
  const comment = page.getByRole("article", { name: `Comment ${scenario.comment}` });
  await comment.getByLabel("Reason").fill("spam, reported twice");
  await comment.getByRole("button", { name: `Remove comment ${scenario.comment}` }).click();
  await page.waitForLoadState();
  seen.commentsLeft = await page.getByRole("article").count();

  // Jobs: retry the dead one.
  await page.getByRole("link", { name: "Jobs" }).click();
  await page.waitForLoadState();
  await page.getByRole("button", { name: `Retry job ${scenario.deadJob}` }).click();
  await page.waitForLoadState();
  seen.afterRetry = page.url();

  // 4. A form posted with the session cookie but without the session's CSRF token (as a
  // page elsewhere would post it, were the cookie not SameSite=Strict). The console's
  // CSP refuses the page's own fetch, so the browser context's request API sends it.
  const forged = await context.request.post(`${userPage}/enable`, {
    form: { csrf: "forged" },
    maxRedirects: 0,
  });
  seen.csrfRefused = forged.status();
  check(seen.csrfRefused === 403, `a form without its token answered ${seen.csrfRefused}`);

  // 5. Every screen, scanned by axe-core. The scanner is a script, which the console's
  // CSP (rightly) refuses: it runs in a second context that bypasses CSP, signed in with
  // the same session cookie.
  const scanning = await browser.newContext({ bypassCSP: true });
  await scanning.addCookies(await context.cookies());
  const scanner = await scanning.newPage();
  const screens = {
    overview: "/admin",
    users: "/admin/users",
    user: userPage.replace(base, ""),
    articles: "/admin/articles",
    article: `/admin/articles/${scenario.article}`,
    jobs: "/admin/jobs",
    events: "/admin/events",
    audit: "/admin/audit",
  };
  for (const [name, path] of Object.entries(screens)) {
    await scanner.goto(`${base}${path}`);
    check(!scanner.url().endsWith("/admin/login"), `${name}: not signed in for the scan`);
    await scanner.addScriptTag({ content: axeSource });
    const result = await scanner.evaluate(async () => {
      // eslint-disable-next-line no-undef
      const { violations } = await axe.run(document, { resultTypes: ["violations"] });
      return violations.map((v) => ({ id: v.id, impact: v.impact, nodes: v.nodes.length }));
    });
    seen.axe[name] = result;
    const grave = result.filter((v) => v.impact === "serious" || v.impact === "critical");
    check(grave.length === 0, `${name}: ${JSON.stringify(grave)}`);
  }
  // The sign-in page, signed out.
  const signedOut = await browser.newContext({ bypassCSP: true });
  const loginPage = await signedOut.newPage();
  await loginPage.goto(`${base}/admin/login`);
  await loginPage.addScriptTag({ content: axeSource });
  const loginViolations = await loginPage.evaluate(async () =>
    // eslint-disable-next-line no-undef
    (await axe.run(document, { resultTypes: ["violations"] })).violations.map((v) => ({ id: v.id, impact: v.impact })));
  seen.axe.login = loginViolations;
  check(!loginViolations.some((v) => v.impact === "serious" || v.impact === "critical"),
    `login: ${JSON.stringify(loginViolations)}`);
  await scanning.close();
  await signedOut.close();

  // The book's screenshot (docs/running/admin-console.md), when asked for.
  if (process.env.STOA_CONSOLE_SCREENSHOT) {
    await page.setViewportSize({ width: 1200, height: 760 });
    await page.goto(userPage);
    await page.screenshot({ path: process.env.STOA_CONSOLE_SCREENSHOT });
  }

  // 6. Keyboard only: Tab reaches the sign-out button, Enter signs out.
  await page.goto(`${base}/admin`);
  let focused = "";
  for (let i = 0; i < 15 && focused !== "Sign out everywhere"; i++) {
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
