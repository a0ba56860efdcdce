//! SQuAD-style answer normalisation, exact match and token F1 (the official v1.1 script's rules:
//! lower-case, strip punctuation and the articles a/an/the, collapse whitespace).

use std::collections::HashMap;

pub fn normalize_answer(s: &str) -> String {
    let lower = s.to_lowercase();
    let no_punct: String = lower.chars().filter(|c| !c.is_ascii_punctuation()).collect();
    no_punct.split_whitespace().filter(|w| !matches!(*w, "a" | "an" | "the")).collect::<Vec<_>>().join(" ")
}

/// 1.0 if the normalised prediction equals any normalised gold answer.
pub fn exact_match(prediction: &str, golds: &[impl AsRef<str>]) -> f64 {
    let p = normalize_answer(prediction);
    if golds.iter().any(|g| normalize_answer(g.as_ref()) == p) {
        1.0
    } else {
        0.0
    }
}

/// 1.0 if a normalised gold answer occurs as whole words in the normalised prediction (a lenient
/// score for models that answer in sentences).
pub fn contains_answer(prediction: &str, golds: &[impl AsRef<str>]) -> f64 {
    let t = format!(" {} ", normalize_answer(prediction));
    let hit = golds.iter().map(|g| normalize_answer(g.as_ref())).filter(|g| !g.is_empty()).any(|g| t.contains(&format!(" {g} ")));
    if hit {
        1.0
    } else {
        0.0
    }
}

/// Max over gold answers of the token-overlap F1.
pub fn token_f1(prediction: &str, golds: &[impl AsRef<str>]) -> f64 {
    golds.iter().map(|g| f1_one(prediction, g.as_ref())).fold(0.0, f64::max)
}

fn f1_one(prediction: &str, gold: &str) -> f64 {
    let p = normalize_answer(prediction);
    let g = normalize_answer(gold);
    let pt: Vec<&str> = p.split_whitespace().collect();
    let gt: Vec<&str> = g.split_whitespace().collect();
    if pt.is_empty() || gt.is_empty() {
        return if pt == gt { 1.0 } else { 0.0 };
    }
    let mut counts: HashMap<&str, i64> = HashMap::new();
    for t in &gt {
        *counts.entry(t).or_default() += 1;
    }
    let mut common = 0i64;
    for t in &pt {
        if let Some(c) = counts.get_mut(t) {
            if *c > 0 {
                *c -= 1;
                common += 1;
            }
        }
    }
    if common == 0 {
        return 0.0;
    }
    let precision = common as f64 / pt.len() as f64;
    let recall = common as f64 / gt.len() as f64;
    2.0 * precision * recall / (precision + recall)
}

/// Mean and standard error of the mean.
pub fn mean_stderr(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    if xs.is_empty() {
        return (0.0, 0.0);
    }
    let mean = xs.iter().sum::<f64>() / n;
    if xs.len() < 2 {
        return (mean, 0.0);
    }
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, (var / n).sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation_follows_squad() {
        assert_eq!(normalize_answer("The  Eiffel Tower!"), "eiffel tower");
        assert_eq!(normalize_answer("an Apple, a day"), "apple day");
    }

    #[test]
    fn em_and_f1() {
        assert_eq!(exact_match("the Paris", &["Paris"]), 1.0);
        assert_eq!(exact_match("Lyon", &["Paris", "paris"]), 0.0);
        assert!((token_f1("New York City", &["New York"]) - 0.8).abs() < 1e-9);
        assert_eq!(token_f1("Boston", &["New York"]), 0.0);
        assert_eq!(token_f1("x", &["y", "x"]), 1.0);
    }

    #[test]
    fn contains_matches_whole_words_only() {
        assert_eq!(contains_answer("It was held in Santa Clara, California.", &["Santa Clara, California"]), 1.0);
        assert_eq!(contains_answer("The Denver Broncos won", &["Broncos"]), 1.0);
        assert_eq!(contains_answer("in 17450 BC", &["1745"]), 0.0);
        assert_eq!(contains_answer("anything", &["the"]), 0.0);
    }

    #[test]
    fn stderr_of_constant_is_zero() {
        let (m, s) = mean_stderr(&[1.0, 1.0, 1.0]);
        assert_eq!((m, s), (1.0, 0.0));
        let (m, s) = mean_stderr(&[0.0, 1.0]);
        assert!((m - 0.5).abs() < 1e-12 && (s - 0.5).abs() < 1e-12);
    }
}
