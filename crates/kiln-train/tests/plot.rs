//! PNG pictures: the files are written, are PNG, and decode to the expected size.

mod common;

use std::path::Path;

use kiln_train::{plot_confusion_matrix, EpochLogs, History};

/// Checks the PNG signature and the IHDR chunk, decodes the whole image, and returns its
/// size and how many pixels are not white.
fn png_info(path: &Path) -> (u32, u32, usize) {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
    assert_eq!(u32::from_be_bytes(bytes[8..12].try_into().unwrap()), 13, "IHDR length");
    assert_eq!(&bytes[12..16], b"IHDR");
    let w = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
    let h = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!((info.width, info.height), (w, h));
    assert_eq!(info.color_type, png::ColorType::Rgb);
    let ink = buf[..info.buffer_size()].chunks(3).filter(|p| p != &[255, 255, 255]).count();
    (w, h, ink)
}

fn history(epochs: usize) -> History {
    let mut h = History::default();
    for e in 0..epochs {
        let x = e as f64;
        let logs: EpochLogs = [
            ("loss", 1.0 / (1.0 + x)),
            ("val_loss", 1.2 / (1.0 + 0.8 * x)),
            ("accuracy", 0.5 + 0.4 * (1.0 - (-x / 3.0).exp())),
            ("val_accuracy", 0.5 + 0.35 * (1.0 - (-x / 3.0).exp())),
            ("lr", if e < 5 { 0.1 } else { 0.01 }),
            ("time_s", 0.5),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        h.epochs.push(logs);
    }
    h
}

#[test]
fn history_plot_writes_a_png_with_one_panel_per_figure() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("history.png");
    history(12).plot(&path).unwrap();
    let (w, h, ink) = png_info(&path);
    // loss, accuracy and the changing learning rate: three panels of 280 pixels
    assert_eq!((w, h), (760, 3 * 280));
    assert!(ink > 2000, "something was drawn ({ink} pixels)");
    // no temporary file left beside it
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn history_plot_handles_one_epoch_nan_and_constant_figures() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("one.png");
    let mut h = History::default();
    h.epochs.push([("loss".to_string(), 0.5), ("val_loss".to_string(), f64::NAN)].into_iter().collect());
    h.plot(&path).unwrap();
    assert_eq!(png_info(&path).0, 760);

    let mut h = history(4);
    h.epochs[2].insert("loss".into(), f64::INFINITY);
    for e in &mut h.epochs {
        e.insert("accuracy".into(), 1.0);
    }
    h.plot(&path).unwrap();
    assert_eq!(png_info(&path).1, 2 * 280, "constant lr: no lr panel");
}

#[test]
#[should_panic(expected = "no epoch")]
fn history_plot_of_nothing_panics() {
    History::default().plot(std::env::temp_dir().join("never.png")).unwrap();
}

#[test]
fn confusion_matrix_heat_map_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cm.png");
    let counts: Vec<Vec<u64>> = vec![vec![50, 2, 0], vec![3, 41, 6], vec![0, 9, 39]];
    plot_confusion_matrix(&counts, &["setosa", "versicolor", "virginica"], &path).unwrap();
    let (w, h, ink) = png_info(&path);
    assert!(w >= 3 * 72 && h >= 3 * 72, "{w}x{h}");
    assert!(ink > 3 * 72 * 72 / 2, "cells are filled ({ink} pixels)");

    // normalised values and many classes
    let k = 12;
    let m: Vec<Vec<f64>> = (0..k).map(|i| (0..k).map(|j| if i == j { 0.9 } else { 0.1 / 11.0 }).collect()).collect();
    let names: Vec<String> = (0..k).map(|i| format!("class {i}")).collect();
    plot_confusion_matrix(&m, &names, &path).unwrap();
    png_info(&path);
}

#[test]
#[should_panic(expected = "class names")]
fn confusion_matrix_needs_a_name_per_class() {
    plot_confusion_matrix(&[vec![1u64, 0], vec![0, 1]], &["a"], std::env::temp_dir().join("never.png")).unwrap();
}

#[test]
fn plotting_into_a_missing_folder_is_an_io_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no/such/folder/h.png");
    let e = history(3).plot(&path).unwrap_err();
    assert!(matches!(e, kiln_train::TrainError::Io { .. }), "{e}");
    assert!(e.to_string().contains("h.png"), "{e}");
}
