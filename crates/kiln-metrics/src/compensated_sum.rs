//! `CompensatedSum`: a running sum that does not lose the small terms.

/// Neumaier's compensated sum: accumulating millions of per-sample errors over an epoch in a
/// plain `f64` loses about `log10(n)` digits; this keeps the result within a few ulps.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct CompensatedSum {
    sum: f64,
    compensation: f64,
}

impl CompensatedSum {
    pub(crate) fn add(&mut self, x: f64) {
        let t = self.sum + x;
        if !t.is_finite() {
            // an infinite (or NaN) sum stays so; the compensation would turn it into NaN
            self.sum = t;
            return;
        }
        if self.sum.abs() >= x.abs() {
            self.compensation += (self.sum - t) + x;
        } else {
            self.compensation += (x - t) + self.sum;
        }
        self.sum = t;
    }

    pub(crate) fn merge(&mut self, other: &CompensatedSum) {
        self.add(other.sum);
        self.compensation += other.compensation;
    }

    pub(crate) fn value(&self) -> f64 {
        if self.sum.is_finite() {
            self.sum + self.compensation
        } else {
            self.sum
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_small_terms() {
        let mut s = CompensatedSum::default();
        s.add(1.0);
        for _ in 0..10 {
            s.add(1e-16);
        }
        s.add(-1.0);
        assert!((s.value() - 1e-15).abs() < 1e-30);
    }

    #[test]
    fn infinity_stays_infinite() {
        let mut s = CompensatedSum::default();
        s.add(1.0);
        s.add(f64::INFINITY);
        s.add(2.0);
        assert_eq!(s.value(), f64::INFINITY);
    }
}
