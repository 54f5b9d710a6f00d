//! The one price table: what a million tokens of each model family cost. The controller owns the
//! table in force (today's public prices by default), prices its own model calls with it and
//! sends it with every lease; the runner's gateway meters and reserves with the same numbers.

/// Prices of one model family, micro-dollars per million tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Input tokens.
    pub input: f64,
    /// Output tokens.
    pub output: f64,
    /// Tokens written to the prompt cache.
    pub cache_write: f64,
    /// Tokens read from the prompt cache.
    pub cache_read: f64,
}

impl Rate {
    /// `input` and `output` dollars per million tokens, with the Messages API's cache multipliers
    /// (writes 1.25×, reads 0.1× the input price).
    pub fn usd(input: f64, output: f64) -> Self {
        Self {
            input: input * 1e6,
            output: output * 1e6,
            cache_write: input * 1.25e6,
            cache_read: input * 0.1e6,
        }
    }

    /// `input` and `output` dollars per million tokens as the Responses API bills them: cached
    /// input at 0.1× the input price, no charge for writing the cache (its `cache_write` is the
    /// input price, which only the worst case of a call uses).
    pub fn usd_responses(input: f64, output: f64) -> Self {
        Self {
            input: input * 1e6,
            output: output * 1e6,
            cache_write: input * 1e6,
            cache_read: input * 0.1e6,
        }
    }

    /// The cost of the given token counts, micro-dollars.
    pub fn cost(&self, input: i64, output: i64, cache_write: i64, cache_read: i64) -> f64 {
        (input as f64 * self.input
            + output as f64 * self.output
            + cache_write as f64 * self.cache_write
            + cache_read as f64 * self.cache_read)
            / 1e6
    }
}

/// The table: (model family, rate). The longest family the model name contains wins (so
/// `opus-4-1` is priced apart from `opus`); a model no family matches is priced at the most
/// expensive entry, so an unknown name never costs less than it might.
#[derive(Debug, Clone, PartialEq)]
pub struct Prices(pub Vec<(String, Rate)>);

impl Default for Prices {
    /// Public list prices (USD per million tokens, 2026-11): Opus 5/25, Sonnet 3/15, Haiku 1/5;
    /// the older Opus models still served (Opus 4 and 4.1, Claude 3 Opus) 15/75 — a sandbox may
    /// name any model, so a dearer old one must not be metered at its family's newer price.
    /// The OpenAI models the Codex backend uses are priced at ASSUMED rates, not read from a
    /// price list: gpt-5.5 at 1.25/10 and gpt-5-mini at 0.25/2 (the published GPT-5 and GPT-5
    /// mini rates); any other model, OpenAI's included, is priced at the dearest entry as below.
    /// An operator sets the real ones with the `prices` setting.
    fn default() -> Self {
        Self(vec![
            ("opus".into(), Rate::usd(5.0, 25.0)),
            ("sonnet".into(), Rate::usd(3.0, 15.0)),
            ("haiku".into(), Rate::usd(1.0, 5.0)),
            ("gpt-5-mini".into(), Rate::usd_responses(0.25, 2.0)),
            ("gpt-5.5".into(), Rate::usd_responses(1.25, 10.0)),
            ("opus-4-1".into(), Rate::usd(15.0, 75.0)),
            ("opus-4-2025".into(), Rate::usd(15.0, 75.0)),
            ("3-opus".into(), Rate::usd(15.0, 75.0)),
        ])
    }
}

impl Prices {
    /// The rate of `model` (an alias or a full name).
    pub fn of(&self, model: &str) -> Rate {
        let table = if self.0.is_empty() {
            &Self::default().0
        } else {
            &self.0
        };
        table
            .iter()
            .filter(|(family, _)| !family.is_empty() && model.contains(family.as_str()))
            .max_by_key(|(family, _)| family.len())
            .or_else(|| {
                table
                    .iter()
                    .max_by(|a, b| a.1.output.total_cmp(&b.1.output))
            })
            .map(|(_, r)| *r)
            .expect("the default table is not empty")
    }

    /// The cost of a call without cache tokens, micro-dollars (rounded).
    pub fn cost_microusd(&self, model: &str, input: i64, output: i64) -> i64 {
        self.of(model).cost(input, output, 0, 0).round() as i64
    }

    /// The table as sent with a lease.
    pub fn to_wire(&self) -> Vec<crate::Price> {
        self.0
            .iter()
            .map(|(model, r)| crate::Price {
                model: model.clone(),
                input: r.input,
                output: r.output,
                cache_write: r.cache_write,
                cache_read: r.cache_read,
            })
            .collect()
    }

    /// The table a lease carried; an empty one (a controller that sends none) is the default.
    /// Negative or non-finite rates are read as the most expensive default rate.
    pub fn from_wire(wire: &[crate::Price]) -> Self {
        if wire.is_empty() {
            return Self::default();
        }
        let fallback = Self::default().of("");
        let sane = |v: f64, d: f64| if v.is_finite() && v >= 0.0 { v } else { d };
        Self(
            wire.iter()
                .map(|p| {
                    (
                        p.model.clone(),
                        Rate {
                            input: sane(p.input, fallback.input),
                            output: sane(p.output, fallback.output),
                            cache_write: sane(p.cache_write, fallback.cache_write),
                            cache_read: sane(p.cache_read, fallback.cache_read),
                        },
                    )
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn models_are_priced_by_family_and_an_unknown_one_at_the_dearest() {
        let p = Prices::default();
        assert_eq!(p.of("claude-opus-4-5").output, 25e6);
        assert_eq!(p.of("haiku").input, 1e6);
        assert_eq!(p.of("some-new-model").output, 75e6, "the dearest entry");
        // An older, dearer model of a family is priced as itself, not as the family's newest.
        assert_eq!(p.of("claude-opus-4-1-20250805").output, 75e6);
        assert_eq!(p.of("claude-opus-4-20250514").output, 75e6);
        assert_eq!(p.of("claude-3-opus-20240229").output, 75e6);
        assert_eq!(p.of("claude-opus-4-5-20251101").output, 25e6);
        assert_eq!(p.cost_microusd("sonnet", 1_000_000, 100_000), 4_500_000);
        assert_eq!(Prices(Vec::new()).of("x"), p.of("some-new-model"));
        // The Codex backend's models: the mini one is not taken for its larger sibling, and an
        // OpenAI model the table does not name is priced at the dearest entry.
        assert_eq!(p.of("gpt-5.5").output, 10e6);
        assert_eq!(p.of("gpt-5-mini").output, 2e6);
        assert_eq!(p.of("gpt-5.5").cache_read, 0.125e6);
        assert_eq!(p.of("gpt-9"), p.of("some-new-model"));
    }

    #[test]
    fn the_wire_form_round_trips_and_insane_rates_are_dear() {
        let p = Prices::default();
        assert_eq!(Prices::from_wire(&p.to_wire()), p);
        assert_eq!(Prices::from_wire(&[]), p);
        let mut wire = p.to_wire();
        wire[2].output = -1.0;
        wire[2].input = f64::NAN;
        let back = Prices::from_wire(&wire);
        assert_eq!(back.of("haiku").output, 75e6);
        assert_eq!(back.of("haiku").input, 15e6);
    }
}
