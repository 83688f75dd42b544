//! [`Image`]: a channels-first `f32` image, the input of the image transforms.

/// An image as `f32` values in channels-first (CHW) order, like a torchvision image tensor.
///
/// The image loaders give values in `[0, 1]` (the byte divided by 255, as `ToTensor` does).
///
/// ```
/// use kiln_data::Image;
/// let img = Image::from_u8(&[0, 255, 51, 102], 1, 2, 2);
/// assert_eq!(img.shape(), [1, 2, 2]);
/// assert_eq!(img.get(0, 1, 0), 0.2);
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Image {
    /// The values, `data[(c * height + y) * width + x]`.
    pub data: Vec<f32>,
    /// Number of channels (1 grey, 3 RGB).
    pub channels: usize,
    /// Height in pixels.
    pub height: usize,
    /// Width in pixels.
    pub width: usize,
}

impl Image {
    /// An image from CHW values.
    ///
    /// **Panics** if `data.len() != channels * height * width`.
    pub fn new(data: Vec<f32>, channels: usize, height: usize, width: usize) -> Self {
        assert_eq!(
            data.len(),
            channels * height * width,
            "Image::new: {} values for a {channels}x{height}x{width} image",
            data.len()
        );
        Image { data, channels, height, width }
    }

    /// A zero image.
    pub fn zeros(channels: usize, height: usize, width: usize) -> Self {
        Image { data: vec![0.0; channels * height * width], channels, height, width }
    }

    /// An image from CHW bytes, scaled to `[0, 1]` by dividing by 255.
    ///
    /// **Panics** if `bytes.len() != channels * height * width`.
    pub fn from_u8(bytes: &[u8], channels: usize, height: usize, width: usize) -> Self {
        Image::new(bytes.iter().map(|&b| f32::from(b) / 255.0).collect(), channels, height, width)
    }

    /// `[channels, height, width]`.
    #[must_use]
    pub fn shape(&self) -> [usize; 3] {
        [self.channels, self.height, self.width]
    }

    /// The value of channel `c` at row `y`, column `x`.
    ///
    /// **Panics** if out of range.
    #[inline]
    #[must_use]
    pub fn get(&self, c: usize, y: usize, x: usize) -> f32 {
        debug_assert!(c < self.channels && y < self.height && x < self.width);
        self.data[(c * self.height + y) * self.width + x]
    }

    /// Sets the value of channel `c` at row `y`, column `x`.
    #[inline]
    pub fn set(&mut self, c: usize, y: usize, x: usize, value: f32) {
        let (h, w) = (self.height, self.width);
        self.data[(c * h + y) * w + x] = value;
    }

    /// Channel `c` as a row-major slice.
    #[must_use]
    pub fn plane(&self, c: usize) -> &[f32] {
        let n = self.height * self.width;
        &self.data[c * n..(c + 1) * n]
    }

    /// Channel `c` as a mutable row-major slice.
    pub fn plane_mut(&mut self, c: usize) -> &mut [f32] {
        let n = self.height * self.width;
        &mut self.data[c * n..(c + 1) * n]
    }

    /// Channel `c` sampled at real coordinates `(y, x)` by bilinear interpolation; points outside
    /// the image read `fill`.
    #[must_use]
    pub fn sample_bilinear(&self, c: usize, y: f32, x: f32, fill: f32) -> f32 {
        let (h, w) = (self.height as isize, self.width as isize);
        let (y0, x0) = (y.floor(), x.floor());
        let (dy, dx) = (y - y0, x - x0);
        let (y0, x0) = (y0 as isize, x0 as isize);
        let at = |yy: isize, xx: isize| -> f32 {
            if yy < 0 || xx < 0 || yy >= h || xx >= w {
                fill
            } else {
                self.get(c, yy as usize, xx as usize)
            }
        };
        let top = at(y0, x0) * (1.0 - dx) + at(y0, x0 + 1) * dx;
        let bottom = at(y0 + 1, x0) * (1.0 - dx) + at(y0 + 1, x0 + 1) * dx;
        top * (1.0 - dy) + bottom * dy
    }

    /// The image resized to `height` x `width` by bilinear interpolation (half-pixel centres, as
    /// PyTorch's `interpolate(mode="bilinear", align_corners=False)` without antialiasing).
    #[must_use]
    pub fn resize(&self, height: usize, width: usize) -> Image {
        let mut out = Image::zeros(self.channels, height, width);
        let sy = self.height as f32 / height as f32;
        let sx = self.width as f32 / width as f32;
        for c in 0..self.channels {
            for y in 0..height {
                let fy = ((y as f32 + 0.5) * sy - 0.5).clamp(0.0, (self.height - 1) as f32);
                for x in 0..width {
                    let fx = ((x as f32 + 0.5) * sx - 0.5).clamp(0.0, (self.width - 1) as f32);
                    out.set(c, y, x, self.sample_bilinear(c, fy, fx, 0.0));
                }
            }
        }
        out
    }

    /// The `height` x `width` window whose top-left corner is at `(top, left)`; parts outside the
    /// image are `fill`.
    #[must_use]
    pub fn crop(&self, top: isize, left: isize, height: usize, width: usize, fill: f32) -> Image {
        let mut out = Image::zeros(self.channels, height, width);
        for c in 0..self.channels {
            for y in 0..height {
                let sy = top + y as isize;
                for x in 0..width {
                    let sx = left + x as isize;
                    let v = if sy < 0 || sx < 0 || sy >= self.height as isize || sx >= self.width as isize {
                        fill
                    } else {
                        self.get(c, sy as usize, sx as usize)
                    };
                    out.set(c, y, x, v);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crop_pads_and_resize_keeps_constant_images() {
        let img = Image::new((0..4).map(|v| v as f32).collect(), 1, 2, 2);
        let c = img.crop(-1, 0, 2, 2, 9.0);
        assert_eq!(c.data, vec![9.0, 9.0, 0.0, 1.0]);
        let flat = Image::new(vec![0.5; 3 * 5 * 7], 3, 5, 7).resize(3, 11);
        assert!(flat.data.iter().all(|&v| (v - 0.5).abs() < 1e-6));
        assert_eq!(img.resize(2, 2), img);
        assert_eq!(img.sample_bilinear(0, 0.5, 0.5, 0.0), 1.5);
    }
}
