//! `hsm-bench capacity`'s section of the report: what the modelled-HSM scenario found. Here,
//! with the other report types, so that the report does not depend on the subcommand that
//! fills it in.

use serde::Serialize;

use super::{micros, thousands};

/// What the capacity scenario found.
#[derive(Debug, Serialize)]
pub struct CapacityReport {
    pub hsms: u32,
    pub model: String,
    pub stand_in_signatures: bool,
    pub rated_per_hsm_per_s: f64,
    pub rated_total_per_s: f64,
    /// The model's own p99 latency (no queueing): the "modelled latency" of the target.
    pub model_p99_us: f64,
    pub sustained_per_s: f64,
    pub sustained_vs_rated: f64,
    /// The median of the per-bucket rates: on a shared machine, where other processes take
    /// the CPU in bursts, closer to what the gateway and model do than the mean.
    pub median_bucket_per_s: f64,
    pub p99_us: f64,
    pub failed_requests: u64,
    pub knocked_out: Option<String>,
    /// When the control file was rewritten, seconds into the measured window.
    pub knockout_at_s: Option<f64>,
    pub restore_at_s: Option<f64>,
    /// Mean throughput before the knockout, while out (from 1 s after), after the restore
    /// (from 5 s after).
    pub before_per_s: Option<f64>,
    pub during_per_s: Option<f64>,
    pub after_per_s: Option<f64>,
    pub settle_s: Option<f64>,
    pub recover_s: Option<f64>,
    pub bucket_ms: f64,
    pub workdir: String,
    /// The gateway configuration and the control file's model line, verbatim: with the
    /// command line, enough to run it again.
    pub gateway_config: String,
    pub control: String,
}

impl CapacityReport {
    pub fn summary(&self) -> String {
        let opt = |v: Option<f64>, unit: &str| {
            v.map_or("-".to_owned(), |v| {
                if unit == "/s" {
                    format!("{}/s", thousands(v))
                } else {
                    format!("{v:.2} {unit}")
                }
            })
        };
        let mut out = format!(
            "\ncapacity: {} modelled HSM(s), {} — rated {}/s each, {}/s in all{}\n\
             sustained {}/s = {:.1} % of rated (median {}-ms bucket {}/s); p99 {} (model p99 \
             {}); failed requests {}\n",
            self.hsms,
            self.model,
            thousands(self.rated_per_hsm_per_s),
            thousands(self.rated_total_per_s),
            if self.stand_in_signatures {
                " (STAND-IN signatures)"
            } else {
                ""
            },
            thousands(self.sustained_per_s),
            self.sustained_vs_rated * 100.0,
            self.bucket_ms,
            thousands(self.median_bucket_per_s),
            micros(self.p99_us),
            micros(self.model_p99_us),
            self.failed_requests
        );
        if let Some(hsm) = &self.knocked_out {
            out.push_str(&format!(
                "knockout of {hsm} at {} s, back at {} s: before {}, while out {}, after {}; \
                 settled in {}, recovered in {}\n",
                opt(self.knockout_at_s, "").trim_end(),
                opt(self.restore_at_s, "").trim_end(),
                opt(self.before_per_s, "/s"),
                opt(self.during_per_s, "/s"),
                opt(self.after_per_s, "/s"),
                opt(self.settle_s, "s"),
                opt(self.recover_s, "s"),
            ));
        }
        out.push_str(&format!(
            "work directory (config, tokens, control, gateway log): {}\n",
            self.workdir
        ));
        out
    }
}
