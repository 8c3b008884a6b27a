//! Great-circle distances on a spherical Earth (mean radius [`EARTH_RADIUS_M`]), positions as
//! `(latitude, longitude)` in degrees. One implementation for every part of Shoal that measures
//! where a device is: the rules engine's `geo_distance`, plugins (through `shoal_sdk::geo`),
//! claim reports and the cold-chain simulator. No dependencies, so it builds for
//! `wasm32-wasip2` too.
//!
//! A polyline's segments are great-circle arcs (the shortest way between their ends), which is
//! how a route of waypoints is driven; on 100 km segments a flat-map approximation would be off
//! by more than a typical 2 km corridor.

use std::f64::consts::PI;

/// The Earth's mean radius (IUGG), metres.
pub const EARTH_RADIUS_M: f64 = 6_371_008.8;

/// A position: `(latitude, longitude)` in degrees.
pub type Position = (f64, f64);

fn radians(deg: f64) -> f64 {
    deg * (PI / 180.0)
}

/// Great-circle distance between two positions, metres: the haversine distance computed in its
/// `atan2` form (the spherical case of Vincenty's formula), which stays exact for antipodal
/// points, where `asin(sqrt(h))` loses half its digits.
pub fn distance_m(a: Position, b: Position) -> f64 {
    let (p1, p2) = (radians(a.0), radians(b.0));
    let dl = radians(b.1 - a.1);
    let (s1, c1, s2, c2) = (p1.sin(), p1.cos(), p2.sin(), p2.cos());
    let y = (c2 * dl.sin()).hypot(c1 * s2 - s1 * c2 * dl.cos());
    let x = s1 * s2 + c1 * c2 * dl.cos();
    EARTH_RADIUS_M * y.atan2(x)
}

/// Shortest distance from `p` to the polyline, metres (infinite for an empty one). The distance
/// to a segment is the cross-track distance when the foot of the perpendicular falls between
/// the segment's ends, else the distance to the nearer end.
pub fn distance_to_polyline_m(p: Position, polyline: &[Position]) -> f64 {
    match polyline {
        [] => f64::INFINITY,
        [only] => distance_m(p, *only),
        _ => polyline
            .windows(2)
            .map(|w| distance_to_arc_m(p, w[0], w[1]))
            .fold(f64::INFINITY, f64::min),
    }
}

type V3 = [f64; 3];

/// The unit vector of a position.
fn unit(p: Position) -> V3 {
    let (la, lo) = (radians(p.0), radians(p.1));
    [la.cos() * lo.cos(), la.cos() * lo.sin(), la.sin()]
}

fn cross(a: V3, b: V3) -> V3 {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}

fn dot(a: V3, b: V3) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

/// Distance from `p` to the shorter great-circle arc from `a` to `b`, metres.
fn distance_to_arc_m(p: Position, a: Position, b: Position) -> f64 {
    let (va, vb, vp) = (unit(a), unit(b), unit(p));
    let normal = cross(va, vb);
    let len = dot(normal, normal).sqrt();
    let to_ends = || distance_m(p, a).min(distance_m(p, b));
    if len < 1e-15 {
        // The ends coincide (or are antipodal): no arc to be beside.
        return to_ends();
    }
    let n = [normal[0] / len, normal[1] / len, normal[2] / len];
    // p's projection on the arc's plane lies between a and b when it is on the inner side of
    // both ends.
    let s = dot(vp, n);
    let foot = [vp[0] - s * n[0], vp[1] - s * n[1], vp[2] - s * n[2]];
    if dot(cross(va, foot), n) >= 0.0 && dot(cross(foot, vb), n) >= 0.0 {
        s.clamp(-1.0, 1.0).asin().abs() * EARTH_RADIUS_M
    } else {
        to_ends()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HAMBURG: Position = (53.5511, 9.9937);
    const COPENHAGEN: Position = (55.6761, 12.5683);

    #[test]
    fn one_degree_of_longitude_on_the_equator() {
        let d = distance_m((0.0, 0.0), (0.0, 1.0));
        assert!((d - 2.0 * PI * EARTH_RADIUS_M / 360.0).abs() < 1e-6, "{d}");
    }

    #[test]
    fn antipodes_are_half_a_circumference() {
        let d = distance_m((0.0, 0.0), (0.0, 180.0));
        assert!((d - PI * EARTH_RADIUS_M).abs() < 1e-6, "{d}");
    }

    #[test]
    fn hamburg_to_copenhagen_is_about_288_km() {
        let km = distance_m(HAMBURG, COPENHAGEN) / 1000.0;
        assert!((km - 288.0).abs() < 4.0, "{km}");
        assert_eq!(distance_m(HAMBURG, HAMBURG), 0.0);
    }

    #[test]
    fn polyline_distance_is_cross_track_between_the_ends_and_to_an_end_beyond() {
        let line = [(0.0, 0.0), (0.0, 10.0)];
        // 0.1 degree north of the equator segment, halfway along: the cross-track distance.
        let d = distance_to_polyline_m((0.1, 5.0), &line);
        assert!((d - distance_m((0.0, 5.0), (0.1, 5.0))).abs() < 1.0, "{d}");
        // Beyond the east end: the distance to that end.
        let d = distance_to_polyline_m((0.0, 11.0), &line);
        assert!((d - distance_m((0.0, 10.0), (0.0, 11.0))).abs() < 1e-6, "{d}");
        // On the line.
        assert!(distance_to_polyline_m((0.0, 3.0), &line) < 1e-6);
    }

    #[test]
    fn degenerate_polylines() {
        assert!(distance_to_polyline_m(HAMBURG, &[]).is_infinite());
        assert_eq!(distance_to_polyline_m(HAMBURG, &[HAMBURG]), 0.0);
        let d = distance_to_polyline_m(COPENHAGEN, &[HAMBURG, HAMBURG]);
        assert!((d - distance_m(HAMBURG, COPENHAGEN)).abs() < 1e-6);
    }

    #[test]
    fn the_nearest_of_several_segments_counts() {
        let line = [HAMBURG, (54.3233, 10.1228), COPENHAGEN];
        let near_kiel = (54.3333, 10.1228);
        let d = distance_to_polyline_m(near_kiel, &line);
        assert!(d < 1_200.0, "{d}");
    }
}
