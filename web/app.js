// The page: a drawing pad (pointer events), the MNIST preprocessing of preprocess.js, the kiln-
// exported CNN run by onnxruntime-web's WebAssembly backend, and ten probability bars.
//
// onnxruntime-web and its .wasm files are served from node_modules beside this page (`npm ci`),
// never from a CDN. The model is `model/mnist_cnn.onnx` (or the URL in `?model=`), written by
// kiln: see the README, "The model in a browser".
//
// For tests and the curious, `window.kilnDemo` holds the last model input (the normalised
// 28x28 values, row after row), the probabilities and the predicted class; `strokes` counts the
// strokes drawn and `classified` the strokes the shown result includes, so a driver knows when
// the result belongs to the finished drawing.

import * as ort from './node_modules/onnxruntime-web/dist/ort.wasm.min.mjs';
import { intensities, normalise, softmax, SIDE, toMnist } from './preprocess.js';

const pad = document.getElementById('pad');
const preview = document.getElementById('preview');
const bars = document.getElementById('bars');
const prediction = document.getElementById('prediction');
const status = document.getElementById('status');
const pen = document.getElementById('pen');
const penValue = document.getElementById('pen-value');

const demo = {
  ready: false,
  strokes: 0,
  classified: 0,
  input: null,
  probabilities: null,
  predicted: null,
  backend: null,
};
window.kilnDemo = demo;

const ctx = pad.getContext('2d', { willReadFrequently: true });
const previewCtx = preview.getContext('2d');

function setStatus(text, state) {
  status.textContent = text;
  status.dataset.state = state;
}

// ---- the bars ----

const rows = [];
for (let d = 0; d < 10; d++) {
  const li = document.createElement('li');
  li.dataset.digit = String(d);
  li.innerHTML = `<span class="digit">${d}</span><span class="track"><span class="fill"></span></span><span class="pct">&ndash;</span>`;
  bars.appendChild(li);
  rows.push(li);
}

function showProbabilities(probs) {
  const top = probs ? probs.indexOf(Math.max(...probs)) : -1;
  rows.forEach((li, d) => {
    const p = probs ? probs[d] : null;
    li.dataset.probability = p === null ? '' : String(p);
    li.classList.toggle('top', d === top);
    li.querySelector('.fill').style.width = p === null ? '0' : `${(100 * p).toFixed(2)}%`;
    li.querySelector('.pct').textContent = p === null ? '\u2013' : `${(100 * p).toFixed(1)} %`;
  });
  prediction.textContent = top < 0 ? '\u2013' : String(top);
  prediction.dataset.class = top < 0 ? '' : String(top);
}

function showPreview(image) {
  const img = previewCtx.createImageData(SIDE, SIDE);
  for (let i = 0; i < SIDE * SIDE; i++) {
    const v = image ? Math.round(255 * image[i]) : 0;
    img.data.set([v, v, v, 255], 4 * i);
  }
  previewCtx.putImageData(img, 0, 0);
}

// ---- the drawing pad ----

function clearPad() {
  ctx.fillStyle = '#000';
  ctx.fillRect(0, 0, pad.width, pad.height);
}

function point(event) {
  const r = pad.getBoundingClientRect();
  return [((event.clientX - r.left) * pad.width) / r.width, ((event.clientY - r.top) * pad.height) / r.height];
}

let last = null;
let activePointer = null;
const PAUSE_MS = 120;
let pauseTimer = null;

pad.addEventListener('pointerdown', (event) => {
  if (activePointer !== null) return;
  activePointer = event.pointerId;
  pad.setPointerCapture(event.pointerId);
  last = point(event);
  ctx.strokeStyle = '#fff';
  ctx.fillStyle = '#fff';
  ctx.lineWidth = Number(pen.value);
  ctx.lineCap = 'round';
  ctx.lineJoin = 'round';
  ctx.beginPath();
  ctx.arc(last[0], last[1], ctx.lineWidth / 2, 0, 2 * Math.PI);
  ctx.fill();
  event.preventDefault();
});

pad.addEventListener('pointermove', (event) => {
  if (event.pointerId !== activePointer) return;
  const p = point(event);
  ctx.beginPath();
  ctx.moveTo(last[0], last[1]);
  ctx.lineTo(p[0], p[1]);
  ctx.stroke();
  last = p;
});

function endStroke(event) {
  if (event.pointerId !== activePointer) return;
  activePointer = null;
  last = null;
  demo.strokes += 1;
  // Classify once the hand pauses: a stroke that follows within PAUSE_MS restarts the wait, so
  // quick strokes (the bars of a 4, a 7's crossbar) cost one run of the model, not one each.
  clearTimeout(pauseTimer);
  pauseTimer = setTimeout(classify, PAUSE_MS);
}
pad.addEventListener('pointerup', endStroke);
pad.addEventListener('pointercancel', endStroke);

document.getElementById('clear').addEventListener('click', () => {
  generation += 1;
  clearTimeout(pauseTimer);
  clearPad();
  demo.strokes = 0;
  demo.classified = 0;
  demo.input = null;
  demo.probabilities = null;
  demo.predicted = null;
  showPreview(null);
  showProbabilities(null);
});

pen.addEventListener('input', () => {
  penValue.textContent = `${pen.value} px`;
});

// ---- the model ----

let session = null;
let busy = false;
let again = false;
// Bumped by Clear: a run that started before it does not show its result.
let generation = 0;

// Runs the model on the pad as it is now; a call while a run is under way asks for one more run
// after it, so the result shown always ends up including the last stroke.
async function classify() {
  if (!session) return;
  if (busy) {
    again = true;
    return;
  }
  busy = true;
  try {
    do {
      again = false;
      const strokes = demo.strokes;
      const gen = generation;
      const image = toMnist(intensities(ctx.getImageData(0, 0, pad.width, pad.height).data), pad.width, pad.height);
      showPreview(image);
      if (image === null) {
        demo.input = null;
        demo.probabilities = null;
        demo.predicted = null;
        showProbabilities(null);
      } else {
        // ANCHOR: infer
        const input = normalise(image);
        const feeds = { [session.inputNames[0]]: new ort.Tensor('float32', input, [1, 1, SIDE, SIDE]) };
        const out = await session.run(feeds);
        if (gen !== generation) continue;
        const probs = softmax(out[session.outputNames[0]].data);
        // ANCHOR_END: infer
        demo.input = Array.from(input);
        demo.probabilities = probs;
        demo.predicted = probs.indexOf(Math.max(...probs));
        showProbabilities(probs);
      }
      demo.classified = strokes;
    } while (again);
  } catch (e) {
    setStatus(`The model failed: ${e.message ?? e}`, 'error');
    throw e;
  } finally {
    busy = false;
  }
}

async function load() {
  clearPad();
  showPreview(null);
  showProbabilities(null);
  const modelUrl = new URLSearchParams(location.search).get('model') ?? 'model/mnist_cnn.onnx';
  // The .wasm files next to the module above; one thread, because wasm threads need a
  // cross-origin-isolated page (COOP/COEP headers) that a plain static server does not give.
  ort.env.wasm.wasmPaths = new URL('./node_modules/onnxruntime-web/dist/', location.href).href;
  ort.env.wasm.numThreads = 1;
  try {
    const response = await fetch(modelUrl);
    if (!response.ok) {
      throw new Error(
        `${modelUrl}: HTTP ${response.status}. Make it with: ` +
          'mkdir -p web/model; KILN_ONNX_OUT=web/model/mnist_cnn.onnx cargo run --release -p kiln-onnx --example export_onnx',
      );
    }
    const bytes = new Uint8Array(await response.arrayBuffer());
    session = await ort.InferenceSession.create(bytes, { executionProviders: ['wasm'] });
    demo.backend = 'wasm';
    demo.ready = true;
    setStatus(`Ready: ${modelUrl} (${bytes.length} bytes) on onnxruntime-web ${ort.env.versions?.web ?? ''}, wasm backend.`, 'ready');
    if (demo.strokes > 0) classify(); // drawn while the model was loading
  } catch (e) {
    setStatus(`Could not load the model: ${e.message ?? e}`, 'error');
  }
}

load();
