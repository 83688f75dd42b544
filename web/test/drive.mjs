// Drives the page in headless Chromium (playwright-core) the way a visitor would: for each
// MNIST digit given, it clears the pad and draws the digit's pixels with pointer events (one
// stroke per horizontal run of ink, pixels >= --threshold of 255, with the pen as wide as one
// MNIST pixel on the pad unless --pen gives its width in pad pixels), waits
// until the page has classified the finished drawing, and reads the predicted class and the
// probabilities from the page's bars and the model input from `window.kilnDemo`.
//
// Started by crates/kiln-onnx/tests/browser.rs, which serves the page, compares the results
// with kiln's own forward pass on the same inputs and removes nothing but its temporary files.
//
//   node test/drive.mjs --url URL --digits FILE --out FILE --screenshot FILE [--chromium PATH]
//
// --digits: for each digit, one label byte then 28 * 28 pixel bytes (MNIST's IDX layout).
// --out: one line per digit, whitespace-separated: label, predicted class, the ten
//   probabilities, the 784 input values.
// The page may fetch from its own origin only: any other request fails the run (no CDN).

import { readFileSync, writeFileSync } from 'node:fs';
import { chromium } from 'playwright-core';

function args() {
  const out = { chromium: '/usr/bin/chromium', threshold: 0.5 };
  const argv = process.argv.slice(2);
  for (let i = 0; i < argv.length; i += 2) {
    const key = argv[i].replace(/^--/, '');
    if (argv[i + 1] === undefined) throw new Error(`${argv[i]} needs a value`);
    out[key] = argv[i + 1];
  }
  for (const k of ['url', 'digits', 'out', 'screenshot']) {
    if (!out[k]) throw new Error(`--${k} is required`);
  }
  out.threshold = Number(out.threshold);
  return out;
}

const SIDE = 28;

/** The horizontal runs of ink (pixel >= threshold) of a 28x28 digit: [row, first col, last col]. */
function runs(pixels, threshold) {
  const out = [];
  for (let r = 0; r < SIDE; r++) {
    let start = -1;
    for (let c = 0; c <= SIDE; c++) {
      const ink = c < SIDE && pixels[r * SIDE + c] / 255 >= threshold;
      if (ink && start < 0) start = c;
      if (!ink && start >= 0) {
        out.push([r, start, c - 1]);
        start = -1;
      }
    }
  }
  return out;
}

async function main() {
  const opt = args();
  const bytes = readFileSync(opt.digits);
  const per = 1 + SIDE * SIDE;
  if (bytes.length === 0 || bytes.length % per !== 0) {
    throw new Error(`${opt.digits}: ${bytes.length} bytes is not a whole number of ${per}-byte digits`);
  }
  const t0 = Date.now();
  const origin = new URL(opt.url).origin;
  const browser = await chromium.launch({
    executablePath: opt.chromium,
    headless: true,
    args: ['--disable-dev-shm-usage', '--disable-gpu', '--disable-gpu-vsync', '--disable-frame-rate-limit'],
  });
  const foreign = [];
  const errors = [];
  try {
    const page = await browser.newPage({ viewport: { width: 1000, height: 640 }, deviceScaleFactor: 1 });
    await page.route('**/*', (route) => {
      const url = route.request().url();
      if (new URL(url).origin === origin) return route.continue();
      foreign.push(url);
      return route.abort();
    });
    page.on('pageerror', (e) => errors.push(`page error: ${e.message}`));
    page.on('console', (m) => {
      if (m.type() === 'error') errors.push(`console error: ${m.text()}`);
    });
    await page.goto(opt.url);
    await page.waitForFunction(
      () => window.kilnDemo?.ready || document.getElementById('status')?.dataset.state === 'error',
      null,
      { timeout: 60_000 },
    );
    const status = await page.textContent('#status');
    if (!(await page.evaluate(() => window.kilnDemo.ready))) throw new Error(`the page did not load the model: ${status}`);
    process.stderr.write(`page: ${status} (${Date.now() - t0} ms after launch)\n`);
    const t1 = Date.now();
    let events = 0;

    // The pen one MNIST pixel wide on the pad (through the page's own slider).
    const box = await page.locator('#pad').boundingBox();
    const padSide = await page.evaluate(() => document.getElementById('pad').width);
    const cell = box.width / SIDE;
    await page.locator('#pen').fill(String(opt.pen ?? Math.round(padSide / SIDE)));

    // Chromium's own input pipeline (what page.mouse uses, minus the hover move before each
    // press): trusted pointerdown / pointermove / pointerup events on the pad.
    const cdp = await page.context().newCDPSession(page);
    const mouse = (type, x, y, buttons) =>
      cdp.send('Input.dispatchMouseEvent', { type, x, y, button: 'left', buttons, clickCount: 1 });

    const lines = [];
    const n = bytes.length / per;
    for (let i = 0; i < n; i++) {
      const label = bytes[i * per];
      const pixels = bytes.subarray(i * per + 1, (i + 1) * per);
      await page.click('#clear');
      const strokes = runs(pixels, opt.threshold);
      events += 3 * strokes.length;
      for (const [r, c0, c1] of strokes) {
        const y = box.y + (r + 0.5) * cell;
        await mouse('mousePressed', box.x + (c0 + 0.5) * cell, y, 1);
        await mouse('mouseMoved', box.x + (c1 + 0.5) * cell, y, 1);
        await mouse('mouseReleased', box.x + (c1 + 0.5) * cell, y, 0);
      }
      await page.waitForFunction(
        (k) => window.kilnDemo.strokes === k && window.kilnDemo.classified === k,
        strokes.length,
        { timeout: 30_000 },
      );
      const shown = await page.evaluate(() => ({
        predicted: document.getElementById('prediction').dataset.class,
        probabilities: Array.from(document.querySelectorAll('#bars li'), (li) => li.dataset.probability),
        input: window.kilnDemo.input,
      }));
      if (shown.input === null || shown.input.length !== SIDE * SIDE) {
        throw new Error(`digit ${i}: the page shows no model input after ${strokes.length} strokes`);
      }
      lines.push([label, shown.predicted, ...shown.probabilities, ...shown.input].join(' '));
      if (i === n - 1) await page.screenshot({ path: opt.screenshot, fullPage: true });
    }
    process.stderr.write(`drawn: ${n} digits, ${events} pointer events, ${Date.now() - t1} ms\n`);
    writeFileSync(opt.out, lines.join('\n') + '\n');
  } finally {
    await browser.close();
  }
  if (foreign.length) throw new Error(`the page requested other origins: ${foreign.join(', ')}`);
  if (errors.length) throw new Error(errors.join('\n'));
}

main().catch((e) => {
  process.stderr.write(`drive.mjs: ${e.stack ?? e}\n`);
  process.exit(1);
});
