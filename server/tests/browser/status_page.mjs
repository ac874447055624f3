// Drives the status page in headless Chromium (run by server/tests/status_page.rs).
// argv: URL (with #token=…), session id A, screenshot path.
// Protocol on stdout: prints "ready" once the page lists every shard owned by A, then
// waits (no reload) until the shards are split evenly between A and one other session
// (the test opens it after "ready"), saves the screenshot and prints "ok <owners JSON>".
// Any failure exits non-zero with a message.
import { createRequire } from "node:module";
const require = createRequire(import.meta.url);
const { chromium } = require(process.env.KB_PLAYWRIGHT_DIR ? `${process.env.KB_PLAYWRIGHT_DIR}/playwright-core` : "playwright-core");

const [url, a, shot] = process.argv.slice(2);
const shards = Number(process.env.KB_SHARDS || "4");
const browser = await chromium.launch({ executablePath: process.env.KB_CHROMIUM || "chromium", args: ["--no-sandbox"] });
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  let loads = 0;
  page.on("load", () => loads++);
  await page.goto(url);
  const owners = () => page.$$eval("[data-testid=shard]", rows => rows.map(r => r.dataset.owner));
  await page.waitForFunction(([a, n]) => {
    const rows = [...document.querySelectorAll("[data-testid=shard]")];
    return rows.length === n && rows.every(r => r.dataset.owner === a);
  }, [a, shards], { timeout: 30000 });
  console.log("ready");
  await page.waitForFunction(([a, n]) => {
    const o = [...document.querySelectorAll("[data-testid=shard]")].map(r => r.dataset.owner);
    const others = new Set(o.filter(x => x && x !== a));
    return o.length === n && o.filter(x => x === a).length === n / 2 && others.size === 1
      && o.filter(x => others.has(x)).length === n / 2
      && document.querySelectorAll("[data-testid=session]").length === 2;
  }, [a, shards], { timeout: 60000 });
  await page.waitForSelector("[data-testid=move]", { timeout: 10000 });
  if (loads !== 1) throw new Error(`the page reloaded (${loads} loads)`);
  await page.screenshot({ path: shot, fullPage: true });
  console.log("ok", JSON.stringify(await owners()));
} finally {
  await browser.close();
}
