//! Geography for the simulated fleet: real European cities, truck routes between them as
//! polylines with a few real intermediate waypoints, great-circle (haversine) distances,
//! position interpolation by distance travelled, and the distance from a point to a route
//! (for corridor-deviation checks).

/// Mean Earth radius in metres (IUGG), the radius of the haversine formula.
pub use shoal_geo::EARTH_RADIUS_M;

/// A position in degrees (WGS 84).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LatLon {
    /// Latitude, degrees north.
    pub lat: f64,
    /// Longitude, degrees east.
    pub lon: f64,
}

impl LatLon {
    /// A position from latitude and longitude in degrees.
    pub const fn new(lat: f64, lon: f64) -> LatLon {
        LatLon { lat, lon }
    }
}

/// A named place.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct City {
    /// Lower-case ASCII identifier (`hamburg`), used in route names.
    pub id: &'static str,
    /// Display name.
    pub name: &'static str,
    /// City-centre position.
    pub pos: LatLon,
}

const fn city(id: &'static str, name: &'static str, lat: f64, lon: f64) -> City {
    City {
        id,
        name,
        pos: LatLon::new(lat, lon),
    }
}

/// The endpoints of the fleet's routes: ports and cities on European fish routes.
pub const CITIES: &[City] = &[
    city("bergen", "Bergen", 60.3913, 5.3221),
    city("oslo", "Oslo", 59.9139, 10.7522),
    city("gothenburg", "Gothenburg", 57.7089, 11.9746),
    city("copenhagen", "Copenhagen", 55.6761, 12.5683),
    city("hamburg", "Hamburg", 53.5511, 9.9937),
    city("rotterdam", "Rotterdam", 51.9244, 4.4777),
    city("brussels", "Brussels", 50.8503, 4.3517),
    city("paris", "Paris", 48.8566, 2.3522),
    city("lyon", "Lyon", 45.7640, 4.8357),
    city("milan", "Milan", 45.4642, 9.1900),
    city("munich", "Munich", 48.1351, 11.5820),
    city("vienna", "Vienna", 48.2082, 16.3738),
    city("warsaw", "Warsaw", 52.2297, 21.0122),
    city("gdansk", "Gdansk", 54.3520, 18.6466),
];

/// Looks a city up by its id (`"hamburg"`).
pub fn city_by_id(id: &str) -> Option<&'static City> {
    CITIES.iter().find(|c| c.id == id)
}

/// A route as stored: endpoints by city id, waypoints in between (real towns along the road).
struct RouteSpec {
    from: &'static str,
    to: &'static str,
    via: &'static [(f64, f64)],
}

const ROUTE_SPECS: &[RouteSpec] = &[
    // E47 over Fehmarn (Puttgarden-Rødby ferry) and Zealand.
    RouteSpec {
        from: "hamburg",
        to: "copenhagen",
        via: &[
            (53.8655, 10.6866), // Lübeck
            (54.4990, 11.2260), // Puttgarden
            (54.6550, 11.3500), // Rødby
            (55.4426, 11.7902), // Ringsted
        ],
    },
    // E16 / E134 over the mountains.
    RouteSpec {
        from: "bergen",
        to: "oslo",
        via: &[
            (60.6280, 6.4180),  // Voss
            (60.7010, 8.9470),  // Gol
            (60.1680, 10.2560), // Hønefoss
        ],
    },
    // E6 south along the coast.
    RouteSpec {
        from: "oslo",
        to: "gothenburg",
        via: &[
            (59.4340, 10.6580), // Moss
            (59.0950, 11.2700), // Svinesund
            (58.3490, 11.9350), // Uddevalla
        ],
    },
    // E6 / E20 over the Øresund bridge.
    RouteSpec {
        from: "gothenburg",
        to: "copenhagen",
        via: &[
            (56.6740, 12.8570), // Halmstad
            (56.0460, 12.6940), // Helsingborg
            (55.6050, 13.0030), // Malmö
        ],
    },
    // A1 / A30 / A1 (NL).
    RouteSpec {
        from: "hamburg",
        to: "rotterdam",
        via: &[
            (53.0793, 8.8017), // Bremen
            (52.2799, 8.0472), // Osnabrück
            (52.2215, 6.8937), // Enschede
            (52.0907, 5.1214), // Utrecht
        ],
    },
    // A16 / E19 through Antwerp and Brussels.
    RouteSpec {
        from: "rotterdam",
        to: "paris",
        via: &[
            (51.2194, 4.4025), // Antwerp
            (50.8503, 4.3517), // Brussels
            (50.4542, 3.9567), // Mons
            (49.8465, 3.2876), // Saint-Quentin
        ],
    },
    // A6, the Autoroute du Soleil.
    RouteSpec {
        from: "paris",
        to: "lyon",
        via: &[
            (47.7982, 3.5673), // Auxerre
            (47.0260, 4.8400), // Beaune
            (46.3069, 4.8287), // Mâcon
        ],
    },
    // A43 and the Fréjus tunnel.
    RouteSpec {
        from: "lyon",
        to: "milan",
        via: &[
            (45.5646, 5.9178), // Chambéry
            (45.2000, 6.6700), // Modane
            (45.0703, 7.6869), // Turin
        ],
    },
    // A4 / A22 over the Brenner pass.
    RouteSpec {
        from: "milan",
        to: "munich",
        via: &[
            (45.4384, 10.9916), // Verona
            (46.0748, 11.1217), // Trento
            (47.0025, 11.5075), // Brenner
            (47.2692, 11.4041), // Innsbruck
        ],
    },
    // A8 / A1 (AT).
    RouteSpec {
        from: "munich",
        to: "vienna",
        via: &[
            (47.8571, 12.1181), // Rosenheim
            (47.8095, 13.0550), // Salzburg
            (48.3069, 14.2858), // Linz
            (48.2047, 15.6256), // St. Pölten
        ],
    },
    // S7.
    RouteSpec {
        from: "gdansk",
        to: "warsaw",
        via: &[
            (54.1522, 19.4088), // Elbląg
            (53.6968, 19.9649), // Ostróda
            (52.6237, 20.3753), // Płońsk
        ],
    },
];

/// A route: a polyline from one city to another, with cumulative distances.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// `{from}-{to}` (`hamburg-copenhagen`).
    pub name: String,
    /// The polyline, from the start city to the destination.
    pub points: Vec<LatLon>,
    /// `cum_m[i]`: distance along the route from `points[0]` to `points[i]`, metres.
    cum_m: Vec<f64>,
}

impl Route {
    /// A route through `points` (at least one) called `name`.
    pub fn new(name: impl Into<String>, points: Vec<LatLon>) -> Route {
        let mut cum_m = Vec::with_capacity(points.len());
        let mut total = 0.0;
        for (i, p) in points.iter().enumerate() {
            if i > 0 {
                total += haversine_m(points[i - 1], *p);
            }
            cum_m.push(total);
        }
        Route {
            name: name.into(),
            points,
            cum_m,
        }
    }

    /// Every route of the built-in table, in a fixed order (truck `n` drives
    /// `all()[(n - 1) % len]`).
    pub fn all() -> Vec<Route> {
        ROUTE_SPECS.iter().filter_map(route_of_spec).collect()
    }

    /// The built-in route `name` (`hamburg-copenhagen`), in either direction
    /// (`copenhagen-hamburg` is the reverse).
    pub fn by_name(name: &str) -> Option<Route> {
        let all = Route::all();
        if let Some(r) = all.iter().find(|r| r.name == name) {
            return Some(r.clone());
        }
        all.iter().map(Route::reversed).find(|r| r.name == name)
    }

    /// The same road driven the other way (`copenhagen-hamburg`).
    pub fn reversed(&self) -> Route {
        let name = match self.name.split_once('-') {
            Some((a, b)) => format!("{b}-{a}"),
            None => self.name.clone(),
        };
        Route::new(name, self.points.iter().rev().copied().collect())
    }

    /// Length along the road, metres.
    pub fn length_m(&self) -> f64 {
        self.cum_m.last().copied().unwrap_or(0.0)
    }

    /// Where a truck is after `distance_m` along the route (clamped to the route), and its
    /// heading there (initial bearing of the current segment, degrees clockwise from north).
    pub fn position_at(&self, distance_m: f64) -> (LatLon, f64) {
        let Some(&first) = self.points.first() else {
            return (LatLon::new(0.0, 0.0), 0.0);
        };
        if self.points.len() == 1 {
            return (first, 0.0);
        }
        let d = distance_m.clamp(0.0, self.length_m());
        // The segment [i, i+1] that holds d: the last i with cum_m[i] <= d, at most len - 2.
        let i = self
            .cum_m
            .partition_point(|&c| c <= d)
            .saturating_sub(1)
            .min(self.points.len() - 2);
        let (a, b) = (self.points[i], self.points[i + 1]);
        let seg = self.cum_m[i + 1] - self.cum_m[i];
        let f = if seg > 0.0 {
            ((d - self.cum_m[i]) / seg).clamp(0.0, 1.0)
        } else {
            0.0
        };
        (intermediate(a, b, f), bearing_deg(a, b))
    }

    /// Distance from `p` to this route (see [`distance_to_polyline_m`]).
    pub fn distance_m(&self, p: LatLon) -> f64 {
        distance_to_polyline_m(p, &self.points)
    }
}

fn route_of_spec(s: &RouteSpec) -> Option<Route> {
    let from = city_by_id(s.from)?;
    let to = city_by_id(s.to)?;
    let mut points = vec![from.pos];
    points.extend(s.via.iter().map(|&(lat, lon)| LatLon::new(lat, lon)));
    points.push(to.pos);
    Some(Route::new(format!("{}-{}", from.id, to.id), points))
}

/// Great-circle distance between two positions, metres.
pub fn haversine_m(a: LatLon, b: LatLon) -> f64 {
    shoal_geo::distance_m((a.lat, a.lon), (b.lat, b.lon))
}

/// Initial bearing from `a` to `b`, degrees clockwise from north in `[0, 360)`.
pub fn bearing_deg(a: LatLon, b: LatLon) -> f64 {
    let (la1, la2) = (a.lat.to_radians(), b.lat.to_radians());
    let dlon = (b.lon - a.lon).to_radians();
    let y = dlon.sin() * la2.cos();
    let x = la1.cos() * la2.sin() - la1.sin() * la2.cos() * dlon.cos();
    y.atan2(x).to_degrees().rem_euclid(360.0)
}

/// The point a fraction `f` (0..=1) of the way from `a` to `b` along the great circle.
pub fn intermediate(a: LatLon, b: LatLon, f: f64) -> LatLon {
    let delta = haversine_m(a, b) / EARTH_RADIUS_M;
    if delta < 1e-12 {
        return a;
    }
    let (la1, lo1) = (a.lat.to_radians(), a.lon.to_radians());
    let (la2, lo2) = (b.lat.to_radians(), b.lon.to_radians());
    let wa = ((1.0 - f) * delta).sin() / delta.sin();
    let wb = (f * delta).sin() / delta.sin();
    let x = wa * la1.cos() * lo1.cos() + wb * la2.cos() * lo2.cos();
    let y = wa * la1.cos() * lo1.sin() + wb * la2.cos() * lo2.sin();
    let z = wa * la1.sin() + wb * la2.sin();
    LatLon::new(
        z.atan2((x * x + y * y).sqrt()).to_degrees(),
        y.atan2(x).to_degrees(),
    )
}

/// The point `distance_m` from `p` on the initial bearing `bearing` (degrees).
pub fn destination(p: LatLon, bearing: f64, distance_m: f64) -> LatLon {
    let d = distance_m / EARTH_RADIUS_M;
    let th = bearing.to_radians();
    let (la1, lo1) = (p.lat.to_radians(), p.lon.to_radians());
    let la2 = (la1.sin() * d.cos() + la1.cos() * d.sin() * th.cos()).asin();
    let lo2 = lo1 + (th.sin() * d.sin() * la1.cos()).atan2(d.cos() - la1.sin() * la2.sin());
    LatLon::new(
        la2.to_degrees(),
        (lo2.to_degrees() + 540.0).rem_euclid(360.0) - 180.0,
    )
}

/// Shortest distance from `point` to the polyline, metres (infinite for an empty polyline).
/// Segments are great-circle arcs, as [`Route::position_at`] drives them.
pub fn distance_to_polyline_m(point: LatLon, polyline: &[LatLon]) -> f64 {
    let line: Vec<shoal_geo::Position> = polyline.iter().map(|p| (p.lat, p.lon)).collect();
    shoal_geo::distance_to_polyline_m((point.lat, point.lon), &line)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(id: &str) -> LatLon {
        city_by_id(id).unwrap().pos
    }

    #[test]
    fn hamburg_copenhagen_is_about_288_km() {
        let d = haversine_m(c("hamburg"), c("copenhagen")) / 1000.0;
        assert!((d - 288.0).abs() / 288.0 < 0.02, "{d} km");
    }

    #[test]
    fn other_known_distances() {
        // Paris-Lyon ~392 km, Oslo-Bergen ~305 km, Munich-Vienna ~355 km (straight line).
        for (a, b, km) in [
            ("paris", "lyon", 392.0),
            ("oslo", "bergen", 305.0),
            ("munich", "vienna", 355.0),
        ] {
            let d = haversine_m(c(a), c(b)) / 1000.0;
            assert!((d - km).abs() / km < 0.02, "{a}-{b}: {d} km");
        }
        assert_eq!(haversine_m(c("oslo"), c("oslo")), 0.0);
    }

    #[test]
    fn routes_are_longer_than_the_straight_line_but_not_much() {
        let all = Route::all();
        assert_eq!(all.len(), ROUTE_SPECS.len());
        for r in &all {
            let (a, b) = (r.points[0], *r.points.last().unwrap());
            let straight = haversine_m(a, b);
            assert!(r.length_m() >= straight, "{}", r.name);
            assert!(
                r.length_m() < straight * 1.6,
                "{}: {} vs {}",
                r.name,
                r.length_m(),
                straight
            );
        }
    }

    #[test]
    fn interpolation_follows_the_route() {
        let r = Route::by_name("hamburg-copenhagen").unwrap();
        let (start, _) = r.position_at(0.0);
        let (end, _) = r.position_at(r.length_m());
        assert!(haversine_m(start, c("hamburg")) < 1.0);
        assert!(haversine_m(end, c("copenhagen")) < 1.0);
        // Beyond the ends: clamped.
        assert!(haversine_m(r.position_at(-5.0).0, c("hamburg")) < 1.0);
        assert!(haversine_m(r.position_at(1e9).0, c("copenhagen")) < 1.0);
        // Every interpolated point lies on the route, and distances add up.
        let mut prev = start;
        let mut walked = 0.0;
        let n = 200;
        for i in 1..=n {
            let d = r.length_m() * f64::from(i) / f64::from(n);
            let (p, heading) = r.position_at(d);
            assert!(r.distance_m(p) < 1.0, "{} m off at {d}", r.distance_m(p));
            assert!((0.0..360.0).contains(&heading));
            walked += haversine_m(prev, p);
            prev = p;
        }
        // Samples cut the corners at the waypoints a little.
        assert!(walked <= r.length_m() + 1.0, "{walked} vs {}", r.length_m());
        assert!(walked > r.length_m() * 0.999, "{walked} vs {}", r.length_m());
    }

    #[test]
    fn heading_hamburg_to_luebeck_is_north_east() {
        let r = Route::by_name("hamburg-copenhagen").unwrap();
        let (_, h) = r.position_at(1000.0);
        assert!((30.0..60.0).contains(&h), "{h}");
    }

    #[test]
    fn reversed_route_by_name() {
        let r = Route::by_name("copenhagen-hamburg").unwrap();
        assert_eq!(r.points[0], c("copenhagen"));
        let fwd = Route::by_name("hamburg-copenhagen").unwrap();
        assert!((r.length_m() - fwd.length_m()).abs() < 1e-6);
        assert!(Route::by_name("atlantis-hamburg").is_none());
    }

    #[test]
    fn distance_to_polyline() {
        let line = [c("hamburg"), c("copenhagen")];
        // The endpoints and a point on the line.
        assert!(distance_to_polyline_m(c("hamburg"), &line) < 1.0);
        let mid = intermediate(line[0], line[1], 0.5);
        assert!(distance_to_polyline_m(mid, &line) < 5.0);
        // 5 km sideways from the middle.
        let b = bearing_deg(mid, line[1]);
        let off = destination(mid, b + 90.0, 5000.0);
        let d = distance_to_polyline_m(off, &line);
        assert!((d - 5000.0).abs() < 50.0, "{d}");
        // Beyond an end: the distance to that end.
        let beyond = destination(c("hamburg"), bearing_deg(line[1], line[0]), 10_000.0);
        let d = distance_to_polyline_m(beyond, &line);
        assert!((d - 10_000.0).abs() < 50.0, "{d}");
        assert_eq!(distance_to_polyline_m(mid, &[]), f64::INFINITY);
        assert!((distance_to_polyline_m(mid, &[c("hamburg")]) - haversine_m(mid, c("hamburg"))).abs() < 1e-6);
    }

    #[test]
    fn destination_round_trip() {
        let p = c("oslo");
        let q = destination(p, 135.0, 12_345.0);
        assert!((haversine_m(p, q) - 12_345.0).abs() < 1.0);
        assert!((bearing_deg(p, q) - 135.0).abs() < 0.1);
    }
}
