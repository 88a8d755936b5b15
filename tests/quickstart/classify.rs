//! A simple classifier for the quickstart's pictures: which background, which foreground color
//! and which shape. The prompt-adherence test measures the models with it, so it is tested here
//! on its own, against pictures rendered by the dataset's code with known scenes.
//!
//! The rules (the same as `classify` in tools/quickstart/shapes.py, which the trainer's own
//! evaluation uses): every pixel takes its nearest palette color; the background is the commonest
//! color on the border, the foreground color the commonest other one. The shape follows from that
//! color's pixel mask: solidity (area over the area of the convex hull of the pixels' corners)
//! below 0.75 is a star; otherwise extent (area over the bounding box) above 0.9 is a square,
//! above 0.65 a circle; otherwise a triangle when the top half of the box holds under 38 % of
//! the area (apex up), else a diamond.
use super::{fixture, json};
use weft_nodes::image_io::{Bitmap, decode_png};

/// The dataset's palette (tools/quickstart/shapes.py `COLORS`).
pub const PALETTE: [(&str, [i32; 3]); 8] = [
    ("red", [215, 30, 30]),
    ("orange", [250, 130, 0]),
    ("yellow", [250, 230, 40]),
    ("green", [40, 170, 60]),
    ("blue", [40, 90, 225]),
    ("purple", [140, 50, 190]),
    ("white", [245, 245, 245]),
    ("black", [20, 20, 20]),
];

/// What [`classify`] reads from a picture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reading {
    pub background: &'static str,
    /// None when every pixel is background.
    pub color: Option<&'static str>,
    pub shape: Option<&'static str>,
}

fn nearest(rgb: [i32; 3]) -> usize {
    (0..PALETTE.len())
        .min_by_key(|&i| {
            let p = PALETTE[i].1;
            (0..3).map(|c| (rgb[c] - p[c]).pow(2)).sum::<i32>()
        })
        .unwrap()
}

/// Reads an RGB picture of `width` × `height` (row-major, 3 bytes a pixel).
pub fn classify(width: usize, height: usize, rgb: &[u8]) -> Reading {
    assert_eq!(rgb.len(), width * height * 3);
    let label: Vec<usize> = rgb
        .chunks_exact(3)
        .map(|p| nearest([p[0].into(), p[1].into(), p[2].into()]))
        .collect();
    let at = |x: usize, y: usize| label[y * width + x];
    let mut border = [0usize; PALETTE.len()];
    for x in 0..width {
        border[at(x, 0)] += 1;
        border[at(x, height - 1)] += 1;
    }
    for y in 0..height {
        border[at(0, y)] += 1;
        border[at(width - 1, y)] += 1;
    }
    let bg = argmax(&border);
    let mut counts = [0usize; PALETTE.len()];
    for &l in &label {
        counts[l] += 1;
    }
    counts[bg] = 0;
    let fg = argmax(&counts);
    if counts[fg] == 0 {
        return Reading {
            background: PALETTE[bg].0,
            color: None,
            shape: None,
        };
    }
    let pixels: Vec<(i64, i64)> = (0..height)
        .flat_map(|y| (0..width).map(move |x| (x, y)))
        .filter(|&(x, y)| at(x, y) == fg)
        .map(|(x, y)| (x as i64, y as i64))
        .collect();
    let area = pixels.len() as f64;
    let (x0, x1) = (
        pixels.iter().map(|p| p.0).min().unwrap(),
        pixels.iter().map(|p| p.0).max().unwrap() + 1,
    );
    let (y0, y1) = (
        pixels.iter().map(|p| p.1).min().unwrap(),
        pixels.iter().map(|p| p.1).max().unwrap() + 1,
    );
    let extent = area / ((x1 - x0) * (y1 - y0)) as f64;
    let corners: Vec<(i64, i64)> = pixels
        .iter()
        .flat_map(|&(x, y)| [(x, y), (x + 1, y), (x, y + 1), (x + 1, y + 1)])
        .collect();
    let solidity = area / hull_area(corners);
    // Rows above the box's middle count whole, the middle row (odd heights) half.
    let top: f64 = pixels
        .iter()
        .map(|&(_, y)| match (2 * y + 1).cmp(&(y0 + y1)) {
            std::cmp::Ordering::Less => 1.0,
            std::cmp::Ordering::Equal => 0.5,
            std::cmp::Ordering::Greater => 0.0,
        })
        .sum();
    let shape = if solidity < 0.75 {
        "star"
    } else if extent > 0.9 {
        "square"
    } else if extent > 0.65 {
        "circle"
    } else if top / area < 0.38 {
        "triangle"
    } else {
        "diamond"
    };
    Reading {
        background: PALETTE[bg].0,
        color: Some(PALETTE[fg].0),
        shape: Some(shape),
    }
}

/// The first index of the largest count.
fn argmax(counts: &[usize]) -> usize {
    let mut best = 0;
    for (i, &c) in counts.iter().enumerate() {
        if c > counts[best] {
            best = i;
        }
    }
    best
}

/// Area of the convex hull of integer points (Andrew's monotone chain and the shoelace formula);
/// at least 1.
pub fn hull_area(mut points: Vec<(i64, i64)>) -> f64 {
    points.sort_unstable();
    points.dedup();
    if points.len() < 3 {
        return 1.0;
    }
    let cross = |o: (i64, i64), a: (i64, i64), b: (i64, i64)| {
        (a.0 - o.0) * (b.1 - o.1) - (a.1 - o.1) * (b.0 - o.0)
    };
    let mut hull: Vec<(i64, i64)> = Vec::with_capacity(2 * points.len());
    for pass in 0..2 {
        let start = hull.len();
        let ordered: Box<dyn Iterator<Item = &(i64, i64)>> = if pass == 0 {
            Box::new(points.iter())
        } else {
            Box::new(points.iter().rev())
        };
        for &p in ordered {
            while hull.len() >= start + 2
                && cross(hull[hull.len() - 2], hull[hull.len() - 1], p) <= 0
            {
                hull.pop();
            }
            hull.push(p);
        }
        hull.pop();
    }
    let twice: i64 = (0..hull.len())
        .map(|i| {
            let (a, b) = (hull[i], hull[(i + 1) % hull.len()]);
            a.0 * b.1 - b.0 * a.1
        })
        .sum();
    (twice.abs() as f64 / 2.0).max(1.0)
}

/// An RGB bitmap's bytes (grey and RGBA converted).
pub fn rgb_of(bitmap: &Bitmap) -> Vec<u8> {
    match bitmap.channels {
        3 => bitmap.pixels.clone(),
        4 => bitmap
            .pixels
            .chunks_exact(4)
            .flat_map(|p| [p[0], p[1], p[2]])
            .collect(),
        1 => bitmap.pixels.iter().flat_map(|&g| [g, g, g]).collect(),
        n => panic!("{n} channels"),
    }
}

#[test]
fn hull_area_of_known_polygons() {
    // A 4x3 rectangle's corners and interior points.
    let rect: Vec<(i64, i64)> = (0..=4).flat_map(|x| (0..=3).map(move |y| (x, y))).collect();
    assert_eq!(hull_area(rect), 12.0);
    // A right triangle with legs 6 and 4, plus an interior point.
    assert_eq!(hull_area(vec![(0, 0), (6, 0), (0, 4), (1, 1)]), 12.0);
    // Collinear points have no area: clamped to 1.
    assert_eq!(hull_area(vec![(0, 0), (1, 1), (2, 2)]), 1.0);
}

#[test]
fn plain_background_has_no_foreground() {
    let rgb: Vec<u8> = std::iter::repeat_n([40u8, 90, 225], 16 * 16)
        .flatten()
        .collect();
    let r = classify(16, 16, &rgb);
    assert_eq!((r.background, r.color, r.shape), ("blue", None, None));
}

/// Every one of 100 rendered scenes (all sizes, colors, shapes, positions, backgrounds) is read
/// back right.
#[test]
fn classifies_rendered_ground_truth() {
    let sheet = decode_png(&std::fs::read(fixture("truth.png")).unwrap()).unwrap();
    assert_eq!((sheet.width, sheet.height), (640, 640));
    let rgb = rgb_of(&sheet);
    let truth = json("truth.json");
    let truth = truth.as_array().unwrap();
    assert_eq!(truth.len(), 100);
    let mut shapes_seen = std::collections::BTreeSet::new();
    let mut wrong = Vec::new();
    for (i, scene) in truth.iter().enumerate() {
        let (row, col) = (i / 10, i % 10);
        let mut cell = Vec::with_capacity(64 * 64 * 3);
        for y in 0..64 {
            let start = ((row * 64 + y) * 640 + col * 64) * 3;
            cell.extend_from_slice(&rgb[start..start + 64 * 3]);
        }
        let got = classify(64, 64, &cell);
        let want = (
            scene["background"].as_str(),
            scene["color"].as_str(),
            scene["shape"].as_str(),
        );
        shapes_seen.insert(want.2.unwrap().to_string());
        if (Some(got.background), got.color, got.shape) != want {
            wrong.push(format!("cell {i}: {scene} read as {got:?}"));
        }
    }
    assert_eq!(shapes_seen.len(), 5, "the sheet covers every shape");
    assert!(
        wrong.is_empty(),
        "{} misread:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}
