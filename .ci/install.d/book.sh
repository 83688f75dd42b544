#!/usr/bin/env bash
# mdBook for the book in book/: crates/kiln/tests/book.rs runs `mdbook build book` and checks
# every include, internal link and anchor of the result (it fails under CI=true without mdbook).
# Built from crates.io at a pinned version, without the `serve` and `watch` features (a web
# server and a file watcher that `mdbook build` never uses), which shortens the build.
set -euo pipefail
MDBOOK_VERSION=0.5.4
if command -v mdbook >/dev/null && [ "$(mdbook --version)" = "mdbook v${MDBOOK_VERSION}" ]; then
  mdbook --version
  exit 0
fi
cargo install mdbook --locked --version "${MDBOOK_VERSION}" --no-default-features --features search
mdbook --version
