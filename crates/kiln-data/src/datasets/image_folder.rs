//! An image classification folder: one sub-folder per class, as torchvision's `ImageFolder`.

use std::path::{Path, PathBuf};

use kiln_tensor::Rng;

use crate::dataset::Dataset;
use crate::error::{DataError, Result};
use crate::image::Image;

/// Images in `root/CLASS/*.{png,jpg,jpeg}`: the classes are the sub-folder names in sorted order
/// (class index = position), the samples sorted by class then path, like torchvision's
/// `ImageFolder`. Images are decoded when fetched, converted to RGB, as `[3, H, W]` in `[0, 1]`.
///
/// Items are `(Image, class index)`. The folder is scanned when built; a file that does not decode
/// is reported by [`ImageFolder::try_get`] as a typed error.
#[derive(Clone, Debug)]
pub struct ImageFolder {
    classes: Vec<String>,
    samples: Vec<(PathBuf, usize)>,
}

const EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

impl ImageFolder {
    /// Scans `root`.
    ///
    /// # Errors
    ///
    /// [`DataError::Io`] when `root` or a class folder cannot be listed; [`DataError::NotFound`] when
    /// there is no class folder with an image.
    pub fn new(root: impl AsRef<Path>) -> Result<Self> {
        let root = root.as_ref();
        let list = |dir: &Path| -> Result<Vec<PathBuf>> {
            let mut v = Vec::new();
            for entry in std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))? {
                v.push(entry.map_err(|e| DataError::io(dir, e))?.path());
            }
            v.sort();
            Ok(v)
        };
        let mut classes = Vec::new();
        let mut samples = Vec::new();
        for class_dir in list(root)?.into_iter().filter(|p| p.is_dir()) {
            let class = classes.len();
            classes.push(class_dir.file_name().unwrap_or_default().to_string_lossy().into_owned());
            for file in list(&class_dir)? {
                let ext = file.extension().map(|e| e.to_string_lossy().to_lowercase()).unwrap_or_default();
                if file.is_file() && EXTENSIONS.contains(&ext.as_str()) {
                    samples.push((file, class));
                }
            }
        }
        if samples.is_empty() {
            return Err(DataError::NotFound {
                path: root.to_path_buf(),
                what: "class sub-folders holding .png/.jpg/.jpeg images".into(),
            });
        }
        Ok(ImageFolder { classes, samples })
    }

    /// The class names, in index order.
    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// The image paths and class indices.
    pub fn samples(&self) -> &[(PathBuf, usize)] {
        &self.samples
    }

    /// Decodes sample `index`.
    ///
    /// # Errors
    ///
    /// [`DataError::Image`] (naming the file) when it cannot be read or decoded.
    ///
    /// **Panics** if `index >= len()`.
    pub fn try_get(&self, index: usize) -> Result<(Image, usize)> {
        let (path, class) = &self.samples[index];
        let decoded = image::open(path).map_err(|e| DataError::Image { path: path.clone(), message: e.to_string() })?;
        let rgb = decoded.to_rgb8();
        let (w, h) = (rgb.width() as usize, rgb.height() as usize);
        let mut img = Image::zeros(3, h, w);
        for (i, px) in rgb.pixels().enumerate() {
            for c in 0..3 {
                img.data[c * h * w + i] = f32::from(px.0[c]) / 255.0;
            }
        }
        Ok((img, *class))
    }
}

impl Dataset for ImageFolder {
    type Item = (Image, usize);
    fn len(&self) -> usize {
        self.samples.len()
    }
    /// **Panics** with the [`DataError`] message when the file cannot be decoded (use
    /// [`ImageFolder::try_get`] to handle it).
    fn get_with_rng(&self, index: usize, _rng: &mut Rng) -> (Image, usize) {
        assert!(index < self.len(), "ImageFolder: index {index} out of range for {} images", self.len());
        self.try_get(index).unwrap_or_else(|e| panic!("ImageFolder: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::testutil::TempDir;

    #[test]
    fn classes_from_folders_and_decoding() {
        let dir = TempDir::new("imagefolder");
        let mut png = image::RgbImage::new(3, 2);
        png.put_pixel(2, 1, image::Rgb([255, 0, 51]));
        std::fs::create_dir_all(dir.0.join("dog")).unwrap();
        std::fs::create_dir_all(dir.0.join("cat")).unwrap();
        png.save(dir.0.join("dog/b.png")).unwrap();
        png.save(dir.0.join("cat/a.png")).unwrap();
        image::GrayImage::new(4, 4).save(dir.0.join("cat/c.jpg")).unwrap();
        dir.write("cat/notes.txt", b"not an image");
        dir.write("dog/broken.png", b"not a png");
        let ds = ImageFolder::new(&dir.0).unwrap();
        assert_eq!(ds.classes(), &["cat", "dog"]);
        assert_eq!(ds.len(), 4);
        let (img, class) = ds.get(0);
        assert_eq!((img.shape(), class), ([3, 2, 3], 0));
        assert_eq!((img.get(0, 1, 2), img.get(1, 1, 2), img.get(2, 1, 2)), (1.0, 0.0, 0.2));
        assert_eq!(ds.get(1).0.shape(), [3, 4, 4]);
        let broken = ds.samples().iter().position(|(p, _)| p.ends_with("broken.png")).unwrap();
        assert!(matches!(ds.try_get(broken), Err(DataError::Image { .. })));
        let empty = TempDir::new("imagefolder-empty");
        assert!(matches!(ImageFolder::new(&empty.0), Err(DataError::NotFound { .. })));
    }
}
