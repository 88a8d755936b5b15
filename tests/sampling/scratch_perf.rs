//! Temporary timing probe (not committed).
use weft_nodes::sampling::brownian::BrownianTree;

#[test]
#[ignore]
fn brownian_timing() {
    let numel = 16 * 128 * 128;
    let sig: Vec<f32> = (0..20).map(|i| 1.0 / (1.0 + 0.05 * i as f32)).collect();
    let t = std::time::Instant::now();
    let mut tree = BrownianTree::new(sig[19] as f64, sig[0] as f64, 42, numel);
    for i in 0..19 {
        std::hint::black_box(tree.increment(sig[i + 1] as f64, sig[i] as f64).unwrap());
    }
    eprintln!("20-step tree over {numel}: {:?}", t.elapsed());
    let t = std::time::Instant::now();
    std::hint::black_box(weft_nodes::sampling::torch_randn(1, &[numel]));
    eprintln!("randn {numel}: {:?}", t.elapsed());
}
