//! The README's "Performance" table and chart, made from the scenario result files, so the
//! numbers in the README are always the last run's (`bench/run scenarios` ends with this;
//! `bench/run summary` redoes it from the files alone).

use std::path::Path;

use anyhow::Context;
use plotters::prelude::*;
use serde_json::Value;

use crate::report;

const BEGIN: &str = "<!-- bench:scenarios:begin -->";
const END: &str = "<!-- bench:scenarios:end -->";
const CHART: &str = "scenarios.png";
const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
const DELIVERY: [&str; 4] = ["seed", "burst", "soak", "moonshot"];

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

/// `1234.5` -> `1,235`; below 10 with one decimal, unless a whole number.
fn fmt(x: f64) -> String {
    if !x.is_finite() {
        return "-".into();
    }
    if x < 10.0 && x.fract() != 0.0 {
        return format!("{x:.1}");
    }
    let digits = format!("{:.0}", x);
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn latencies(v: &Value) -> String {
    format!(
        "{} / {} / {} / {}",
        fmt(num(&v["p50"])),
        fmt(num(&v["p95"])),
        fmt(num(&v["p99"])),
        fmt(num(&v["max"]))
    )
}

/// The phases a table shows: all of them, but a soak's first and last minute only.
fn shown(scenario: &str, phases: &[Value]) -> Vec<Value> {
    if scenario == "soak" && phases.len() > 2 {
        vec![phases[0].clone(), phases[phases.len() - 1].clone()]
    } else {
        phases.to_vec()
    }
}

/// CPU (% of one core) and RSS (MiB) of a phase: the fan-out tier (ws-fanout, or the peer's
/// nodes), all server processes together, and the generator.
struct Usage {
    fanout_cpu: f64,
    fanout_rss: f64,
    servers_cpu: f64,
    generator_cpu: f64,
    machine_cpu: f64,
}

fn usage(processes: &Value) -> Usage {
    let mut u = Usage {
        fanout_cpu: 0.0,
        fanout_rss: 0.0,
        servers_cpu: 0.0,
        generator_cpu: f64::NAN,
        machine_cpu: f64::NAN,
    };
    for (name, p) in processes.as_object().into_iter().flatten() {
        let cpu = p["cpu_percent"].as_f64().unwrap_or(0.0);
        if name == "load-generator" {
            u.generator_cpu = cpu;
            continue;
        }
        if name == crate::load::MACHINE {
            u.machine_cpu = cpu;
            continue;
        }
        u.servers_cpu += cpu;
        if name.starts_with("ws-fanout") || name.starts_with("peer-node") {
            u.fanout_cpu += cpu;
            u.fanout_rss += p["rss_mib"].as_f64().unwrap_or(0.0);
        }
    }
    u
}

/// CPU time the fan-out tier spent per socket delivery, in µs: its CPU (% of one core) over
/// the deliveries per second of the same window. It includes the kernel's share of each
/// write, which on loopback carries the receiving side's TCP work too (both sides alike).
fn per_delivery_us(cpu_percent: f64, deliveries_per_sec: f64) -> f64 {
    if deliveries_per_sec > 0.0 {
        cpu_percent / 100.0 / deliveries_per_sec * 1e6
    } else {
        f64::NAN
    }
}

/// The markdown table of every scenario file present.
pub fn table(results: &Path) -> String {
    let mut out = String::from(
        "| scenario | phase | side | messages/min offered | accepted/s | deliveries/s (missing) | delivery p50 / p95 / p99 / max ms | broker floor p50 / p99 ms | fan-out tier CPU % / RSS MiB | fan-out CPU µs per delivery | all server CPU % | generator CPU % | machine CPU % (of 200) |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for name in DELIVERY {
        let Some(file) = report::read(results, name) else {
            continue;
        };
        for side in ["ours", "peer"] {
            let run = &file[side];
            let Some(phases) = run["phases"].as_array() else {
                continue;
            };
            let scenario = format!(
                "{name} ({} sockets, connect p95 {} ms)",
                fmt(num(&run["sockets_open"])),
                fmt(num(&run["connect_ms"]["p95"])),
            );
            let idle = &run["idle"];
            if idle.is_object() {
                let u = usage(&idle["processes"]);
                out.push_str(&format!(
                    "| {scenario} | idle {} s | {side} | 0 | - | - | - | - | {} / {} | - | {} | {} | {} |\n",
                    idle["seconds"],
                    fmt(u.fanout_cpu),
                    fmt(u.fanout_rss),
                    fmt(u.servers_cpu),
                    fmt(u.generator_cpu),
                    fmt(u.machine_cpu),
                ));
            }
            for p in shown(name, phases) {
                let u = usage(&p["processes"]);
                let floor = &p["broker_floor"]["produce_to_consume_ms"];
                out.push_str(&format!(
                    "| {scenario} | {} | {side} | {} | {} | {} ({}) | {} | {} | {} / {} | {} | {} | {} | {} |\n",
                    p["label"].as_str().unwrap_or(""),
                    fmt(num(&p["messages_per_minute"])),
                    fmt(num(&p["accepted_per_sec"])),
                    fmt(num(&p["deliveries_per_sec"])),
                    fmt(num(&p["deliveries_missing"])),
                    latencies(&p["delivery_ms"]),
                    if floor.is_object() {
                        format!("{} / {}", fmt(num(&floor["p50"])), fmt(num(&floor["p99"])))
                    } else {
                        "-".into()
                    },
                    fmt(u.fanout_cpu),
                    fmt(u.fanout_rss),
                    fmt(per_delivery_us(u.fanout_cpu, num(&p["deliveries_per_sec"]))),
                    fmt(u.servers_cpu),
                    fmt(u.generator_cpu),
                    fmt(u.machine_cpu),
                ));
            }
        }
    }
    // A `--targets mongo` run (`replay-mongo.json`), when there is one, holds the newer MongoDB
    // rebuild: its rows stand in for the mongo rows of the full run.
    let mongo_apart = report::read(results, "replay-mongo");
    let has_mongo_apart = mongo_apart.is_some();
    let runs_of = |file: Option<Value>| -> Vec<Value> {
        file.and_then(|f| f["runs"].as_array().cloned())
            .unwrap_or_default()
    };
    let mut runs: Vec<Value> = runs_of(report::read(results, "replay"))
        .into_iter()
        .filter(|r| !has_mongo_apart || r["target"] != "mongo")
        .chain(
            runs_of(mongo_apart)
                .into_iter()
                .filter(|r| r["target"] == "mongo"),
        )
        .collect();
    // Stable: each log size keeps the full run's order, its mongo row after the raw reads.
    runs.sort_by_key(|r| r["log_events"].as_u64().unwrap_or(0));
    for r in runs.iter().filter(|r| r["events_per_second"].is_number()) {
        out.push_str(&format!(
            "| replay ({} events in the log) | {} | ours | - | - | - | {} events/s | - | - | - | - | - | - |\n",
            fmt(num(&r["log_events"])),
            match r["target"].as_str() {
                Some("broker_raw_read") => format!("broker raw read, {} consumer(s)", r["readers"]),
                Some(t) => format!("rebuild {t}"),
                None => String::new(),
            },
            fmt(num(&r["events_per_second"])),
        ));
    }
    out
}

/// Replaces the text between the markers in `readme` (which must hold both).
pub fn splice(readme: &str, section: &str) -> anyhow::Result<String> {
    let start = readme.find(BEGIN).context("README has no begin marker")? + BEGIN.len();
    let end = readme.find(END).context("README has no end marker")?;
    anyhow::ensure!(start <= end, "README markers out of order");
    Ok(format!("{}\n{section}{}", &readme[..start], &readme[end..]))
}

/// Draws the chart into `results` and, when `readme`, rewrites the README's section.
pub fn write(results: &Path, readme: bool) -> anyhow::Result<()> {
    let machine = DELIVERY
        .iter()
        .chain(std::iter::once(&"replay"))
        .find_map(|n| report::read(results, n))
        .map(|f| {
            format!(
                "{} cores, {}",
                f["machine"]["cores"],
                f["machine"]["cpu"].as_str().unwrap_or("unknown CPU")
            )
        })
        .unwrap_or_default();
    let chart = match chart(results) {
        Ok(()) => format!("\n![delivery latency, ours and the peer](bench/results/{CHART})\n"),
        Err(e) => {
            eprintln!("chart not drawn: {e:#}");
            String::new()
        }
    };
    let scenarios: String = DELIVERY
        .iter()
        .filter_map(|n| {
            let file = report::read(results, n)?;
            Some(format!("- `{n}`: {}\n", file["what"].as_str()?))
        })
        .collect();
    let section = format!(
        "Last `bench/run scenarios` on {machine}, everything (stack, peer, load generator) on that one machine; \
         files in `bench/results/`. Latency counts from each message's scheduled send slot to its \
         arrival on each socket; posts go to every room at the same rate.\n\n{scenarios}\n{}{chart}\n",
        table(results)
    );
    if !readme {
        println!("{section}");
        return Ok(());
    }
    let readme_path = Path::new("README.md");
    let readme = std::fs::read_to_string(readme_path)?;
    std::fs::write(readme_path, splice(&readme, &section)?)?;
    println!("README.md performance table rewritten");
    Ok(())
}

/// One category of the chart's top panel: a scenario's phase.
struct Bar {
    label: String,
    ours: Option<(f64, f64)>,
    peer: Option<(f64, f64)>,
    floor: Option<(f64, f64)>,
}

fn p50_p99(v: &Value) -> Option<(f64, f64)> {
    if v["count"].as_u64() == Some(0) {
        return None;
    }
    let (a, b) = (v["p50"].as_f64()?, v["p99"].as_f64()?);
    Some((a.max(0.1), b.max(0.1)))
}

fn chart(results: &Path) -> anyhow::Result<()> {
    let font = std::fs::read(FONT).with_context(|| format!("reading {FONT}"))?;
    plotters::style::register_font("sans-serif", FontStyle::Normal, Box::leak(font.into()))
        .map_err(|_| anyhow::anyhow!("{FONT} is not a usable font"))?;
    let mut bars = Vec::new();
    let mut burst = None;
    for name in DELIVERY {
        let Some(file) = report::read(results, name) else {
            continue;
        };
        if name == "burst" {
            burst = Some(file.clone());
        }
        let phases = |side: &str| file[side]["phases"].as_array().cloned().unwrap_or_default();
        let (ours, peer) = (shown(name, &phases("ours")), shown(name, &phases("peer")));
        for i in 0..ours.len().max(peer.len()) {
            let o = ours.get(i);
            let label = o
                .or(peer.get(i))
                .and_then(|p| p["label"].as_str())
                .unwrap_or("");
            bars.push(Bar {
                label: format!("{name} {}", label.trim_end_matches("/min")),
                ours: o.and_then(|p| p50_p99(&p["delivery_ms"])),
                peer: peer.get(i).and_then(|p| p50_p99(&p["delivery_ms"])),
                floor: o.and_then(|p| p50_p99(&p["broker_floor"]["produce_to_consume_ms"])),
            });
        }
    }
    anyhow::ensure!(!bars.is_empty(), "no scenario results");
    let path = results.join(CHART);
    let root = BitMapBackend::new(&path, (1400, 1000)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(560);
    let ours_color = RGBColor(31, 119, 180);
    let peer_color = RGBColor(255, 127, 14);
    let floor_color = RGBColor(120, 120, 120);

    let highest = bars
        .iter()
        .flat_map(|b| [b.ours, b.peer, b.floor])
        .flatten()
        .map(|(_, p99)| p99)
        .fold(10.0, f64::max);
    let mut top_chart = ChartBuilder::on(&top)
        .caption(
            "Delivery latency p50 to p99 (ms, log scale): ours, the Socket.io peer, the broker's floor",
            ("sans-serif", 22),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(-0.5f64..bars.len() as f64 - 0.5, (0.1f64..highest * 2.0).log_scale())?;
    let labels: Vec<String> = bars.iter().map(|b| b.label.clone()).collect();
    top_chart
        .configure_mesh()
        .x_labels(bars.len() * 2 + 1)
        .x_label_formatter(&|x| {
            let i = x.round();
            if (x - i).abs() < 0.01 && i >= 0.0 {
                labels.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .x_label_style(("sans-serif", 13))
        .y_desc("ms")
        .draw()?;
    for (offset, color, name, pick) in [
        (-0.2, floor_color, "broker floor (same rate)", 0usize),
        (0.0, ours_color, "ours (durable: through the log)", 1),
        (
            0.2,
            peer_color,
            "peer: Socket.io + Redis adapter (not durable)",
            2,
        ),
    ] {
        let ranges: Vec<(f64, (f64, f64))> = bars
            .iter()
            .enumerate()
            .filter_map(|(i, b)| Some((i as f64 + offset, [b.floor, b.ours, b.peer][pick]?)))
            .collect();
        top_chart
            .draw_series(ranges.iter().map(|&(x, (p50, p99))| {
                PathElement::new(vec![(x, p50), (x, p99)], color.stroke_width(6))
            }))?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(6))
            });
        top_chart.draw_series(
            ranges
                .iter()
                .map(|&(x, (p50, _))| Circle::new((x, p50), 5, color.filled())),
        )?;
    }
    top_chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 16))
        .draw()?;

    // The burst, second by second: how deep the spike cuts and how fast each side recovers.
    if let Some(burst) = burst {
        let series = |side: &str| -> Vec<(f64, f64)> {
            burst[side]["timeline"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| Some((s["second"].as_f64()?, s["p99_ms"].as_f64()?.max(0.1))))
                .collect()
        };
        let (ours, peer) = (series("ours"), series("peer"));
        let last = ours.iter().chain(&peer).map(|p| p.0).fold(1.0, f64::max);
        let high = ours.iter().chain(&peer).map(|p| p.1).fold(10.0, f64::max);
        let mut b = ChartBuilder::on(&bottom)
            .caption(
                "Burst, per second of send time: delivery p99 (ms, log scale); 10K/min, 10x for 30 s from second 35, then 10K/min",
                ("sans-serif", 20),
            )
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..last + 1.0, (0.1f64..high * 2.0).log_scale())?;
        b.configure_mesh()
            .x_desc("second of the schedule")
            .y_desc("p99 ms")
            .label_style(("sans-serif", 14))
            .draw()?;
        for (points, color, name) in [
            (ours, ours_color, "ours"),
            (peer, peer_color, "peer (Socket.io)"),
        ] {
            b.draw_series(LineSeries::new(points, color.stroke_width(2)))?
                .label(name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3))
                });
        }
        b.configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 16))
            .draw()?;
    }
    root.present()?;
    println!("wrote {}", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splices_between_the_markers_only() {
        let readme = format!("# t\nbefore\n{BEGIN}\nold table\n{END}\nafter\n");
        let out = splice(&readme, "new table\n").unwrap();
        assert_eq!(
            out,
            format!("# t\nbefore\n{BEGIN}\nnew table\n{END}\nafter\n")
        );
        assert!(splice("no markers", "x").is_err());
    }

    #[test]
    fn formats_numbers_for_the_table() {
        assert_eq!(fmt(1_234_567.4), "1,234,567");
        assert_eq!(fmt(999.6), "1,000");
        assert_eq!(fmt(6.64), "6.6");
        assert_eq!(fmt(0.0), "0");
        assert_eq!(fmt(f64::NAN), "-");
    }

    #[test]
    fn cpu_per_delivery_is_cpu_seconds_over_deliveries() {
        // 30% of a core for 16,667 deliveries a second: 18 µs of CPU each.
        assert!((per_delivery_us(30.0, 16_667.0) - 18.0).abs() < 0.01);
        assert!(per_delivery_us(30.0, 0.0).is_nan());
    }
}
