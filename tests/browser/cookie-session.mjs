// A browser app on another origin of the same site signs in with the refresh token in the
// session cookie, in headless Chromium:
//   node tests/browser/cookie-session.mjs API_URL APP_PORT
// API_URL is stoa-api (http://localhost:PORT); the script serves an empty app page at
// http://localhost:APP_PORT (an origin the server lists in STOA_CORS_ALLOWED_ORIGINS).
// 1. sign-in with `X-Stoa-Session: cookie` from the page: the body has the access token,
//    no refresh token; the browser stored the cookie HttpOnly, Secure, SameSite=Strict;
// 2. the page cannot read it (document.cookie);
// 3. refresh from the page with credentials: a new access token, a new cookie;
// 4. logout from the page: the browser dropped the cookie.
// Prints one JSON line with what it saw; exits non-zero with the reason on failure.
import http from "node:http";
import { chromium } from "playwright-core";

const [api, appPort] = process.argv.slice(2);
if (!api || !appPort) {
  console.error("usage: cookie-session.mjs API_URL APP_PORT");
  process.exit(2);
}
const executablePath = process.env.CHROMIUM ?? "/usr/bin/chromium";
const failures = [];
const check = (ok, message) => ok || failures.push(message);

const app = http.createServer((_, res) => {
  res.writeHead(200, { "content-type": "text/html" });
  res.end("<!doctype html><title>app</title>");
});
await new Promise((resolve) => app.listen(Number(appPort), "127.0.0.1", resolve));

const browser = await chromium.launch({ executablePath, args: ["--no-sandbox"] });
try {
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(`http://localhost:${appPort}/`);
  const call = (path, body, token) =>
    page.evaluate(
      async ({ url, body, token }) => {
        const headers = { "content-type": "application/json", "x-stoa-session": "cookie" };
        if (token) headers.authorization = `Token ${token}`;
        const res = await fetch(url, {
          method: "POST",
          credentials: "include",
          headers,
          body: JSON.stringify(body),
        });
        const text = await res.text();
        return { status: res.status, body: text ? JSON.parse(text) : null };
      },
      { url: `${api}${path}`, body, token },
    );
  const refreshCookie = async () =>
    (await context.cookies(`${api}/api/auth/refresh`)).find((c) => c.name === "__Secure-stoa-refresh");

  const login = await call("/api/users/login", {
    user: { email: "browser@example.com", password: "password-browser" },
  });
  check(login.status === 200, `sign-in answered ${login.status}`);
  check(typeof login.body?.user?.token === "string", "no access token in the body");
  check(login.body?.user?.refreshToken === undefined, "the refresh token is in the body");
  const first = await refreshCookie();
  check(first !== undefined, "the browser did not store the session cookie");
  check(first?.httpOnly && first?.secure && first?.sameSite === "Strict",
    `cookie attributes: ${JSON.stringify(first)}`);
  const visible = await page.evaluate(() => document.cookie);
  check(!visible.includes("stoa-refresh"), "page scripts can read the refresh token");

  const refreshed = await call("/api/auth/refresh", {});
  check(refreshed.status === 200, `refresh answered ${refreshed.status}: ${JSON.stringify(refreshed.body)}`);
  const second = await refreshCookie();
  check(second && second.value !== first?.value, "the refresh did not replace the cookie");
  check(refreshed.body?.user?.token !== login.body?.user?.token, "no new access token");

  const logout = await call("/api/auth/logout", {}, refreshed.body?.user?.token);
  check(logout.status === 204, `logout answered ${logout.status}`);
  check((await refreshCookie()) === undefined, "the cookie outlived the logout");

  if (failures.length) {
    console.error(`FAIL: ${failures.join("; ")}`);
    process.exitCode = 1;
  }
  console.log(JSON.stringify({
    signIn: login.status,
    cookie: first && { httpOnly: first.httpOnly, secure: first.secure, sameSite: first.sameSite, path: first.path },
    refresh: refreshed.status,
    logout: logout.status,
  }));
} finally {
  await browser.close();
  app.close();
}
