// Unit tests of the page's MNIST preprocessing (node's built-in runner):
//   node --test test/          (in web/; also run by crates/kiln-onnx/tests/browser.rs)

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { BOX, MNIST_MEAN, MNIST_STD, SIDE, intensities, normalise, softmax, toMnist } from '../preprocess.js';

/** A width x height black image with the rectangle [x0, x1) x [y0, y1) white. */
function rect(width, height, x0, y0, x1, y1) {
  const g = new Float32Array(width * height);
  for (let y = y0; y < y1; y++) for (let x = x0; x < x1; x++) g[y * width + x] = 1;
  return g;
}

/** The bounding box [x0, y0, x1, y1] (inclusive) of the pixels above `t`, and their sum. */
function bbox(img, t = 0) {
  let [x0, y0, x1, y1, sum] = [SIDE, SIDE, -1, -1, 0];
  for (let y = 0; y < SIDE; y++) {
    for (let x = 0; x < SIDE; x++) {
      const v = img[y * SIDE + x];
      sum += v;
      if (v > t) [x0, y0, x1, y1] = [Math.min(x0, x), Math.min(y0, y), Math.max(x1, x), Math.max(y1, y)];
    }
  }
  return { box: [x0, y0, x1, y1], sum };
}

test('a blank pad gives no input', () => {
  assert.equal(toMnist(new Float32Array(280 * 280), 280, 280), null);
});

test('a square anywhere on the pad becomes a centred 20x20 square', () => {
  for (const [x0, y0] of [[0, 0], [150, 30], [180, 180]]) {
    const img = toMnist(rect(280, 280, x0, y0, x0 + 100, y0 + 100), 280, 280);
    assert.deepEqual(bbox(img).box, [4, 4, 23, 23], `square at ${x0}, ${y0}`);
    assert.ok(Math.abs(bbox(img).sum - BOX * BOX) < 1e-3);
  }
});

test('the aspect ratio is kept: a tall bar stays a tall bar, centred by mass', () => {
  // 40 x 200 -> 4 x 20
  const img = toMnist(rect(280, 280, 10, 40, 50, 240), 280, 280);
  assert.deepEqual(bbox(img).box, [12, 4, 15, 23]);
});

test('area averaging keeps the ink: thin strokes become grey, not lost', () => {
  // an L of one-pixel lines, 100 x 200: scaled by 1/10, so the ink shrinks by 1/100
  const g = rect(280, 280, 100, 40, 101, 240);
  for (let x = 100; x < 200; x++) g[239 * 280 + x] = 1;
  const img = toMnist(g, 280, 280);
  const { box, sum } = bbox(img);
  assert.deepEqual([box[2] - box[0] + 1, box[3] - box[1] + 1], [10, BOX]);
  assert.ok(Math.abs(sum - 299 / 100) < 1e-3, `ink ${sum}`);
  assert.ok(Math.max(...img) < 0.2, 'a one-pixel line is a faint grey at 1/10 scale');
});

test('the values are normalised as kiln trained: (v - 0.1307) / 0.3081', () => {
  const x = normalise(new Float32Array([0, 1, 0.5]));
  assert.ok(Math.abs(x[0] - (0 - MNIST_MEAN) / MNIST_STD) < 1e-6);
  assert.ok(Math.abs(x[1] - (1 - MNIST_MEAN) / MNIST_STD) < 1e-6);
  assert.ok(Math.abs(x[2] - (0.5 - MNIST_MEAN) / MNIST_STD) < 1e-6);
});

test('canvas pixels: the red channel times alpha', () => {
  const g = intensities(new Uint8ClampedArray([255, 255, 255, 255, 255, 0, 0, 0, 51, 51, 51, 255]));
  assert.deepEqual(Array.from(g, (v) => Math.round(v * 100) / 100), [1, 0, 0.2]);
});

test('softmax turns log-probabilities back into the probabilities', () => {
  const p = [0.7, 0.2, 0.1];
  const q = softmax(p.map(Math.log));
  p.forEach((v, i) => assert.ok(Math.abs(q[i] - v) < 1e-12));
});
