//! Any bytes loaded into a model either load completely or fail with a typed error that leaves
//! the model exactly as it was (nothing half-loaded).

#![no_main]

use kiln_nn::{BatchNorm1d, KeyMap, Linear, Module, SafetensorsFile, Sequential};
use libfuzzer_sys::fuzz_target;

fn snapshot(m: &dyn Module<f32>) -> Vec<(String, Vec<u32>)> {
    m.state_dict().into_iter().map(|(k, t)| (k, t.to_vec().iter().map(|x| x.to_bits()).collect())).collect()
}

fuzz_target!(|data: &[u8]| {
    let Ok(file) = SafetensorsFile::from_bytes(data.to_vec()) else { return };
    // Keys `0.weight` [2, 3], `0.bias` [2], `1.{weight,bias,running_mean,running_var}` [2],
    // `1.num_batches_tracked` [].
    let model = Sequential::<f32>::new().add(Linear::new(3, 2)).add(BatchNorm1d::new(2));
    let mut before = snapshot(&model);
    for (strict, map) in [(true, KeyMap::new()), (false, KeyMap::new().strip_prefix("module."))] {
        match file.load_into(&model, &map, strict) {
            Ok(report) => {
                let now = model.state_dict();
                for (source, key) in &report.matched {
                    let want = file.state_tensor::<f32>(source).expect("a loaded tensor decodes");
                    assert_eq!(
                        now[key].to_vec().iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                        want.to_vec().iter().map(|x| x.to_bits()).collect::<Vec<_>>()
                    );
                }
                before = snapshot(&model);
            }
            Err(_) => assert_eq!(snapshot(&model), before, "a failed load changed the model"),
        }
    }
});
