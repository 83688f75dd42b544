//! ResNet-18 and ResNet-34 (He et al. 2016, "Deep Residual Learning for Image Recognition"),
//! as torchvision builds them (`torchvision/models/resnet.py`), with its `state_dict` keys.

use std::fmt;

use kiln_autograd::Var;
use kiln_nn::init::{self, FanMode, Nonlinearity};
use kiln_nn::{
    AdaptiveAvgPool2d, BatchNorm2d, BatchNormConfig, Conv2d, Conv2dConfig, Forward, Layer, Linear, MaxPool2d,
    MaxPool2dConfig, Module, Padding, ReLU, Sequential,
};
use kiln_tensor::Float;

use crate::ModelsError;

/// The sizes of a [`ResNet`] with basic blocks; [`resnet18`](Self::resnet18) and
/// [`resnet34`](Self::resnet34) are torchvision's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResNetConfig {
    /// Basic blocks in each of the four stages (`[2, 2, 2, 2]` for ResNet-18, `[3, 4, 6, 3]`
    /// for ResNet-34).
    pub layers: [usize; 4],
    /// Channels of the stem and the first stage (64 in the paper); the stages have `width`,
    /// `2·width`, `4·width` and `8·width`. Smaller widths give the same network, narrower.
    pub width: usize,
    /// Outputs of the final `fc` layer (1000 for ImageNet).
    pub num_classes: usize,
}

impl ResNetConfig {
    /// ResNet-18: `[2, 2, 2, 2]`, width 64, 1000 classes (11,689,512 parameters).
    pub fn resnet18() -> Self {
        ResNetConfig { layers: [2, 2, 2, 2], width: 64, num_classes: 1000 }
    }

    /// ResNet-34: `[3, 4, 6, 3]`, width 64, 1000 classes (21,797,672 parameters).
    pub fn resnet34() -> Self {
        ResNetConfig { layers: [3, 4, 6, 3], width: 64, num_classes: 1000 }
    }

    /// Builds the network with torchvision's initialisation: convolutions He-normal (fan out,
    /// ReLU gain), batch norms weight 1 and bias 0, `fc` PyTorch's `Linear` default.
    ///
    /// # Errors
    /// [`ModelsError::Config`] when `width`, `num_classes` or a stage's block count is 0.
    pub fn build<E: Float>(&self) -> Result<ResNet<E>, ModelsError> {
        let bad = |field, value: usize| ModelsError::Config {
            config: "ResNetConfig",
            field,
            message: format!("must be > 0, got {value}"),
        };
        if self.width == 0 {
            return Err(bad("width", 0));
        }
        if self.num_classes == 0 {
            return Err(bad("num_classes", 0));
        }
        if let Some(i) = self.layers.iter().position(|&n| n == 0) {
            return Err(ModelsError::Config {
                config: "ResNetConfig",
                field: "layers",
                message: format!("stage {} has 0 blocks ({:?}); every stage needs at least one", i + 1, self.layers),
            });
        }
        let w = self.width;
        let conv1 = Conv2dConfig {
            stride: [2, 2],
            padding: Padding::Explicit([3, 3]),
            bias: false,
            ..Conv2dConfig::new(3, w, 7)
        }
        .build()?;
        let maxpool = MaxPool2dConfig { stride: Some([2, 2]), padding: [1, 1], ..MaxPool2dConfig::new(3) }.build()?;
        let mut inplanes = w;
        let mut stages = Vec::with_capacity(4);
        for (i, &blocks) in self.layers.iter().enumerate() {
            let planes = w << i;
            let stride = if i == 0 { 1 } else { 2 };
            let mut stage = Sequential::new_generic();
            for b in 0..blocks {
                let (inp, s) = if b == 0 { (inplanes, stride) } else { (planes, 1) };
                stage.push(BasicBlock::new(inp, planes, s)?);
            }
            inplanes = planes;
            stages.push(stage);
        }
        let mut stages = stages.into_iter();
        let mut next = || stages.next().expect("four stages");
        let model = ResNet {
            config: self.clone(),
            conv1,
            bn1: BatchNormConfig::new(w).build()?,
            relu: ReLU,
            maxpool,
            layer1: next(),
            layer2: next(),
            layer3: next(),
            layer4: next(),
            avgpool: AdaptiveAvgPool2d::new([1, 1]),
            fc: Linear::new_generic(8 * w, self.num_classes),
        };
        // torchvision: kaiming_normal_(mode="fan_out", nonlinearity="relu") on every conv.
        init::with_rng(|rng| {
            for (key, p) in model.named_parameters() {
                if key.ends_with("weight") && p.ndim() == 4 {
                    init::kaiming_normal_(&p, Nonlinearity::Relu, FanMode::FanOut, rng);
                }
            }
        });
        Ok(model)
    }
}

fn conv<E: Float>(
    in_channels: usize,
    out_channels: usize,
    kernel: usize,
    stride: usize,
) -> Result<Conv2d<E>, ModelsError> {
    Ok(Conv2dConfig {
        stride: [stride, stride],
        padding: Padding::Explicit([kernel / 2, kernel / 2]),
        bias: false,
        ..Conv2dConfig::new(in_channels, out_channels, kernel)
    }
    .build()?)
}

/// torchvision's `BasicBlock`: two 3×3 convolutions with batch norm and a residual
/// connection, `relu(bn2(conv2(relu(bn1(conv1(x))))) + downsample(x))`.
///
/// # Shapes
/// - Input: `[N, inplanes, H, W]`
/// - Output: `[N, planes, H / stride, W / stride]`
///
/// # Parameters
/// `conv1.weight` `[planes, inplanes, 3, 3]`, `bn1.*`, `conv2.weight` `[planes, planes, 3, 3]`,
/// `bn2.*`, and when the shape changes `downsample.0.weight` `[planes, inplanes, 1, 1]` and
/// `downsample.1.*` (a 1×1 convolution with stride and a batch norm).
#[derive(Module)]
pub struct BasicBlock<E: Float = f32> {
    /// 3×3, with the block's stride.
    pub conv1: Conv2d<E>,
    /// After `conv1`.
    pub bn1: BatchNorm2d<E>,
    /// Shared by both activations (it has no state), as in torchvision.
    pub relu: ReLU,
    /// 3×3, stride 1.
    pub conv2: Conv2d<E>,
    /// After `conv2`.
    pub bn2: BatchNorm2d<E>,
    /// 1×1 convolution and batch norm on the shortcut, when the stride or channels change.
    pub downsample: Option<Sequential<E>>,
}

impl<E: Float> BasicBlock<E> {
    /// A block from `inplanes` to `planes` channels with `stride` (a downsampling shortcut when
    /// `stride != 1` or `inplanes != planes`, as torchvision's `_make_layer` adds).
    ///
    /// # Errors
    /// [`ModelsError::Nn`] for zero channels or stride.
    pub fn new(inplanes: usize, planes: usize, stride: usize) -> Result<Self, ModelsError> {
        let downsample = if stride != 1 || inplanes != planes {
            Some(
                Sequential::new_generic()
                    .add(conv(inplanes, planes, 1, stride)?)
                    .add(BatchNormConfig::new(planes).build::<E, 2>()?),
            )
        } else {
            None
        };
        Ok(BasicBlock {
            conv1: conv(inplanes, planes, 3, stride)?,
            bn1: BatchNormConfig::new(planes).build()?,
            relu: ReLU,
            conv2: conv(planes, planes, 3, 1)?,
            bn2: BatchNormConfig::new(planes).build()?,
            downsample,
        })
    }
}

impl<E: Float> Forward<E> for BasicBlock<E> {
    fn forward(&self, x: &Var<E>) -> Var<E> {
        let out = self.relu.call(&self.bn1.call(&self.conv1.call(x)));
        let out = self.bn2.call(&self.conv2.call(&out));
        let identity = match &self.downsample {
            Some(d) => d.call(x),
            None => x.clone(),
        };
        self.relu.call(&out.add(&identity))
    }
}

impl<E: Float> fmt::Display for BasicBlock<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.conv1.config;
        write!(
            f,
            "BasicBlock(inplanes={}, planes={}, stride={}) [{} parameters]",
            c.in_channels,
            c.out_channels,
            c.stride[0],
            self.num_parameters()
        )
    }
}

/// ResNet with basic blocks (ResNet-18/34), torchvision's `ResNet`:
/// `fc(flatten(avgpool(layer4(…layer1(maxpool(relu(bn1(conv1(x)))))))))`.
///
/// Keys are torchvision's (`conv1.weight`, `bn1.running_mean`, `layer1.0.conv1.weight`,
/// `layer2.0.downsample.0.weight`, `fc.bias`, ...), so a torchvision checkpoint loads with
/// [`kiln_nn::load`] (safetensors) or [`kiln_nn::load_mapped`] (`.pth`, through kiln-nn's
/// PyTorch reader). Batch norm uses batch statistics in training mode: call
/// [`eval`](Module::eval) for inference.
///
/// # Shapes
/// - Input: `[N, 3, H, W]` (224×224 for ImageNet; any size from 32×32 works)
/// - Output: `[N, num_classes]` (logits)
///
/// ```
/// use kiln_models::{ResNet, ResNetConfig};
/// use kiln_nn::{summary, Module};
/// let mut model: ResNet = ResNetConfig::resnet18().build()?;
/// assert_eq!(model.num_parameters(), 11_689_512); // as torchvision's resnet18()
/// model.eval(); // batch norm on one image needs the running statistics
/// let s = summary(&model, &[1, 3, 32, 32]);
/// assert_eq!(s.layers[0].name, "conv1");
/// assert_eq!(s.layers.last().unwrap().output_shape, vec![1, 1000]);
/// # Ok::<(), kiln_models::ModelsError>(())
/// ```
#[derive(Module)]
pub struct ResNet<E: Float = f32> {
    /// The sizes it was built with.
    #[module(skip)]
    pub config: ResNetConfig,
    /// The 7×7, stride-2 stem convolution.
    pub conv1: Conv2d<E>,
    /// After the stem.
    pub bn1: BatchNorm2d<E>,
    /// The stem's activation.
    pub relu: ReLU,
    /// 3×3, stride 2, padding 1.
    pub maxpool: MaxPool2d,
    /// Stage 1: [`BasicBlock`]s at `width` channels.
    pub layer1: Sequential<E>,
    /// Stage 2: `2·width` channels, stride 2.
    pub layer2: Sequential<E>,
    /// Stage 3: `4·width` channels, stride 2.
    pub layer3: Sequential<E>,
    /// Stage 4: `8·width` channels, stride 2.
    pub layer4: Sequential<E>,
    /// Global average pooling.
    pub avgpool: AdaptiveAvgPool2d,
    /// The classifier, `8·width` to `num_classes`.
    pub fc: Linear<E>,
}

impl ResNet<f32> {
    /// torchvision's `resnet18(num_classes=num_classes)`.
    ///
    /// **Panics** if `num_classes` is 0.
    pub fn resnet18(num_classes: usize) -> Self {
        ResNetConfig { num_classes, ..ResNetConfig::resnet18() }.build().unwrap_or_else(|e| panic!("{e}"))
    }

    /// torchvision's `resnet34(num_classes=num_classes)`.
    ///
    /// **Panics** if `num_classes` is 0.
    pub fn resnet34(num_classes: usize) -> Self {
        ResNetConfig { num_classes, ..ResNetConfig::resnet34() }.build().unwrap_or_else(|e| panic!("{e}"))
    }
}

impl<E: Float> Forward<E> for ResNet<E> {
    fn forward(&self, x: &Var<E>) -> Var<E> {
        let x = self.maxpool.call(&self.relu.call(&self.bn1.call(&self.conv1.call(x))));
        let x = self.layer4.call(&self.layer3.call(&self.layer2.call(&self.layer1.call(&x))));
        let x = self.avgpool.call(&x);
        self.fc.call(&x.flatten(1, -1))
    }
}

impl<E: Float> fmt::Display for ResNet<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        write!(
            f,
            "ResNet(layers={:?}, width={}, num_classes={}) [{} parameters]",
            c.layers,
            c.width,
            c.num_classes,
            self.num_parameters()
        )
    }
}

#[cfg(test)]
mod tests {
    use kiln_tensor::Tensor;

    use super::*;

    fn small() -> ResNet {
        ResNetConfig { layers: [1, 1, 1, 1], width: 2, num_classes: 3 }.build().unwrap()
    }

    #[test]
    fn shapes_keys_and_display() {
        let m = small();
        let y = m.forward(&Var::constant(Tensor::zeros(&[2, 3, 32, 32])));
        assert_eq!(y.shape().as_slice(), &[2, 3]);
        let keys: Vec<String> = m.state_dict().into_keys().collect();
        assert!(keys.contains(&"layer1.0.conv1.weight".to_string()));
        assert!(!keys.iter().any(|k| k.starts_with("layer1.0.downsample")), "stage 1 keeps its size");
        assert!(keys.contains(&"layer4.0.downsample.1.running_var".to_string()));
        assert_eq!(
            m.to_string(),
            format!("ResNet(layers=[1, 1, 1, 1], width=2, num_classes=3) [{} parameters]", m.num_parameters())
        );
    }

    #[test]
    fn gradients_reach_the_stem() {
        let m = small();
        let values = (0..2 * 3 * 32 * 32).map(|i| (i as f32 * 0.37).sin()).collect();
        let x = Var::constant(Tensor::from_vec(values, &[2, 3, 32, 32]));
        let y = m.forward(&x);
        y.mul(&y).sum_all().backward();
        assert!(m.conv1.weight.grad().is_some_and(|g| g.to_vec().iter().any(|v| *v != 0.0)));
    }

    #[test]
    fn bad_sizes_are_named() {
        let e = ResNetConfig { width: 0, ..ResNetConfig::resnet18() }.build::<f32>().err().unwrap();
        assert_eq!(e.to_string(), "ResNetConfig: width must be > 0, got 0");
        let e = ResNetConfig { layers: [2, 0, 2, 2], ..ResNetConfig::resnet18() }.build::<f32>().err().unwrap();
        assert!(e.to_string().contains("stage 2 has 0 blocks"), "{e}");
    }
}
