// Turns a drawing into the input the MNIST CNN was trained on, as the MNIST set itself was made
// (LeCun et al., http://yann.lecun.com/exdb/mnist/): the digit's bounding box is scaled, keeping
// its aspect ratio, to fit a 20x20 box (area-averaged, so thin strokes become grey edges), then
// placed in a 28x28 field so that its centre of mass sits at the centre. The values are then
// normalised exactly as kiln's training did (`examples/cnn_mnist.rs`, `normalise`): a pixel
// byte b becomes (b / 255 - 0.1307) / 0.3081.

/** MNIST's mean pixel value (of b / 255), as in `examples/cnn_mnist.rs`. */
export const MNIST_MEAN = 0.1307;
/** MNIST's pixel standard deviation, as in `examples/cnn_mnist.rs`. */
export const MNIST_STD = 0.3081;
/** The model's input side. */
export const SIDE = 28;
/** The side of the box the digit is scaled into (MNIST's 20x20). */
export const BOX = 20;

/**
 * The intensities of an RGBA canvas image (white strokes on black) as values in [0, 1]: the red
 * channel weighted by alpha, so a transparent canvas reads as black.
 * @param {Uint8ClampedArray} rgba
 * @returns {Float32Array}
 */
export function intensities(rgba) {
  const out = new Float32Array(rgba.length / 4);
  for (let i = 0; i < out.length; i++) out[i] = (rgba[4 * i] / 255) * (rgba[4 * i + 3] / 255);
  return out;
}

/**
 * For resampling `n` source cells into `m` target cells by area: for each target cell, the
 * source cells it covers and the fraction of each that falls inside it.
 */
function coverage(n, m) {
  const step = n / m;
  const cells = [];
  for (let t = 0; t < m; t++) {
    const lo = t * step;
    const hi = (t + 1) * step;
    const parts = [];
    for (let s = Math.floor(lo); s < Math.min(n, Math.ceil(hi)); s++) {
      const w = Math.min(hi, s + 1) - Math.max(lo, s);
      if (w > 0) parts.push([s, w]);
    }
    cells.push(parts);
  }
  return { cells, step };
}

/**
 * The 28x28 MNIST-style image of a drawing, values in [0, 1], or null when nothing is drawn.
 * @param {Float32Array} gray intensities in [0, 1], row after row
 * @param {number} width
 * @param {number} height
 * @returns {Float32Array | null}
 */
export function toMnist(gray, width, height) {
  let [x0, y0, x1, y1] = [width, height, -1, -1];
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      if (gray[y * width + x] > 0) {
        if (x < x0) x0 = x;
        if (x > x1) x1 = x;
        if (y < y0) y0 = y;
        if (y > y1) y1 = y;
      }
    }
  }
  if (x1 < 0) return null;
  const bw = x1 - x0 + 1;
  const bh = y1 - y0 + 1;
  const scale = BOX / Math.max(bw, bh);
  const tw = Math.max(1, Math.round(bw * scale));
  const th = Math.max(1, Math.round(bh * scale));

  // Area-averaging resample, columns then rows.
  const cols = coverage(bw, tw);
  const rows = coverage(bh, th);
  const wide = new Float32Array(bh * tw);
  for (let y = 0; y < bh; y++) {
    const src = (y0 + y) * width + x0;
    for (let t = 0; t < tw; t++) {
      let s = 0;
      for (const [c, w] of cols.cells[t]) s += w * gray[src + c];
      wide[y * tw + t] = s / cols.step;
    }
  }
  const small = new Float32Array(th * tw);
  for (let t = 0; t < th; t++) {
    for (let x = 0; x < tw; x++) {
      let s = 0;
      for (const [r, w] of rows.cells[t]) s += w * wide[r * tw + x];
      small[t * tw + x] = Math.min(1, s / rows.step);
    }
  }

  // Centre of mass (pixel centres at i + 0.5) moved to the field's centre by a whole-pixel
  // shift, kept inside the field.
  let [mass, mx, my] = [0, 0, 0];
  for (let y = 0; y < th; y++) {
    for (let x = 0; x < tw; x++) {
      const v = small[y * tw + x];
      mass += v;
      mx += v * (x + 0.5);
      my += v * (y + 0.5);
    }
  }
  const clamp = (v, hi) => Math.min(Math.max(v, 0), hi);
  const ox = clamp(Math.round(SIDE / 2 - mx / mass), SIDE - tw);
  const oy = clamp(Math.round(SIDE / 2 - my / mass), SIDE - th);
  const out = new Float32Array(SIDE * SIDE);
  for (let y = 0; y < th; y++) {
    for (let x = 0; x < tw; x++) out[(oy + y) * SIDE + ox + x] = small[y * tw + x];
  }
  return out;
}

/**
 * The model input: `(v - MNIST_MEAN) / MNIST_STD` for each value of a 28x28 image in [0, 1].
 * @param {Float32Array} image
 * @returns {Float32Array}
 */
export function normalise(image) {
  return image.map((v) => (v - MNIST_MEAN) / MNIST_STD);
}

/**
 * Probabilities from the model's output: a softmax, which turns the exported CNN's
 * log-probabilities (its last layer is LogSoftmax) into probabilities and also accepts a model
 * that ends in plain logits.
 * @param {ArrayLike<number>} scores
 * @returns {number[]}
 */
export function softmax(scores) {
  const max = Math.max(...scores);
  const e = Array.from(scores, (s) => Math.exp(s - max));
  const sum = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / sum);
}
