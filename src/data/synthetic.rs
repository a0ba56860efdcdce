//! The synthetic world (docs/design.md, "The synthetic world"): people with single-word attributes, rendered as
//! biographies (random template per attribute, shuffled sentence order, re-sampled every time
//! a document is drawn) and as question/answer pairs, split into
//! - `qa_people`: pretraining world, bios and QA pairs in the training stream;
//! - `bio_only_people`: pretraining world, bios only; their QA measures retention/generalisation;
//! - `new_people`: facts learned later by finetuning;
//! - `seal_people`: passages for SEAL.
//!
//! Everything is a pure function of `WorldConfig.seed`. Every value word belongs to exactly one
//! attribute list and never occurs in a name, so an answer identifies its attribute.

use crate::util::rng_for;
use anyhow::{Context, Result};
use rand::seq::SliceRandom;
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::Path;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WorldConfig {
    pub seed: u64,
    /// People in the pretraining world whose QA pairs are in the training stream.
    pub n_qa_people: usize,
    /// People in the pretraining world seen only through biographies (their QA is held out).
    pub n_bio_only_people: usize,
    /// New people, to be learned later by finetuning.
    pub n_new_people: usize,
    /// People whose passages are reserved for SEAL.
    pub n_seal_people: usize,
}

impl Default for WorldConfig {
    fn default() -> Self {
        Self { seed: 0, n_qa_people: 500, n_bio_only_people: 500, n_new_people: 100, n_seal_people: 50 }
    }
}

impl WorldConfig {
    pub fn total_people(&self) -> usize {
        self.n_qa_people + self.n_bio_only_people + self.n_new_people + self.n_seal_people
    }

    /// Names are unique, so the world can hold at most `MAX_PEOPLE` people.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let n = self.total_people();
        if n > MAX_PEOPLE {
            return Err(format!("the synthetic world has {n} people but at most {MAX_PEOPLE} unique names"));
        }
        if self.n_qa_people + self.n_bio_only_people == 0 {
            return Err("the pretraining world (n_qa_people + n_bio_only_people) is empty".into());
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Word lists. Single words only; disjoint from each other (checked by a test).

#[rustfmt::skip]
const FIRST_NAMES: &[&str] = &[
    "Ada", "Alan", "Amara", "Anika", "Arjun", "Beatrix", "Bruno", "Camila", "Chen", "Clara", "Dario", "Diego",
    "Elena", "Emeka", "Esther", "Farah", "Felix", "Freya", "Gustav", "Hana", "Hugo", "Ines", "Isaac", "Ivan",
    "Jonas", "Julia", "Kai", "Kenji", "Layla", "Leon", "Lina", "Luca", "Maya", "Mateo", "Mei", "Milo", "Nadia",
    "Nia", "Nikolai", "Noor", "Olga", "Omar", "Oscar", "Petra", "Priya", "Rafael", "Rosa", "Ravi", "Sara",
    "Selim", "Sofia", "Tariq", "Tomas", "Uma", "Vera", "Viktor", "Wanda", "Yara", "Yusuf", "Zoe",
];

#[rustfmt::skip]
const LAST_NAMES: &[&str] = &[
    "Smith", "Garcia", "Nakamura", "Okafor", "Petrov", "Novak", "Kowalski", "Rossi", "Silva", "Kim", "Nguyen",
    "Patel", "Singh", "Cohen", "Muller", "Schmidt", "Larsen", "Jensen", "Dubois", "Moreau", "Fischer", "Weber",
    "Alvarez", "Romero", "Torres", "Castro", "Ortiz", "Haddad", "Mansour", "Abara", "Mensah", "Owusu",
    "Adeyemi", "Tanaka", "Sato", "Suzuki", "Yamada", "Chowdhury", "Rahman", "Iyer", "Reddy", "Wong", "Zhang",
    "Liu", "Park", "Choi", "Horvath", "Nagy", "Popescu", "Ionescu", "Eriksson", "Lindqvist", "Virtanen",
    "Korhonen", "Murphy", "Kelly", "Walsh", "Byrne", "Hughes", "Evans",
];

/// Unique full names available.
pub const MAX_PEOPLE: usize = FIRST_NAMES.len() * LAST_NAMES.len();

#[rustfmt::skip]
const CITIES: &[&str] = &[
    "Paris", "Tokyo", "Lagos", "Lima", "Cairo", "Berlin", "Madrid", "Rome", "Sydney", "Toronto", "Chicago",
    "Boston", "Seattle", "Denver", "Dallas", "Atlanta", "Miami", "Mumbai", "Delhi", "Beijing", "Shanghai",
    "Seoul", "Bangkok", "Jakarta", "Manila", "Nairobi", "Accra", "Dakar", "Moscow", "Warsaw", "Prague",
    "Vienna", "Budapest", "Athens", "Lisbon", "Dublin", "Oslo", "Stockholm", "Helsinki", "Copenhagen",
    "Amsterdam", "Brussels", "Zurich", "Istanbul", "Tehran", "Karachi", "Dhaka", "Santiago", "Bogota",
    "Caracas", "Havana", "Montreal", "Vancouver", "Houston", "Phoenix",
];

#[rustfmt::skip]
const UNIVERSITIES: &[&str] = &[
    "Stanford", "Harvard", "Oxford", "Cambridge", "Princeton", "Yale", "Cornell", "Columbia", "Duke",
    "Dartmouth", "Caltech", "Berkeley", "Emory", "Purdue", "Tufts", "Vanderbilt", "Georgetown", "Northwestern",
    "McGill", "Tsinghua", "Sorbonne", "Heidelberg", "Bologna", "Leiden", "Uppsala", "Edinburgh", "Rutgers",
    "Brandeis", "Baylor", "Villanova",
];

#[rustfmt::skip]
const MAJORS: &[&str] = &[
    "physics", "chemistry", "biology", "mathematics", "history", "economics", "philosophy", "linguistics",
    "psychology", "sociology", "anthropology", "geology", "astronomy", "architecture", "engineering",
    "medicine", "law", "nursing", "journalism", "literature", "music", "statistics", "accounting", "marketing",
    "finance", "ecology", "neuroscience", "geography", "theology", "archaeology",
];

#[rustfmt::skip]
const EMPLOYERS: &[&str] = &[
    "Google", "Microsoft", "Intel", "Boeing", "Nike", "Pfizer", "Siemens", "Toyota", "Samsung", "Nokia",
    "Oracle", "Adobe", "Amazon", "Netflix", "Spotify", "Airbus", "Shell", "Unilever", "Nestle", "Sony", "Honda",
    "Philips", "Ericsson", "Cisco", "Dell", "Walmart", "IBM", "Tesla", "Uber", "Canon", "Xerox", "Visa", "Ikea",
    "Lego", "Heineken", "Deloitte", "Accenture", "Novartis", "Roche", "Bayer",
];

#[rustfmt::skip]
const HOBBIES: &[&str] = &[
    "chess", "painting", "surfing", "hiking", "fishing", "knitting", "pottery", "gardening", "cycling",
    "photography", "archery", "baking", "birdwatching", "climbing", "dancing", "fencing", "golf", "juggling",
    "kayaking", "origami", "rowing", "running", "sailing", "skiing", "swimming", "tennis", "yoga", "boxing",
    "calligraphy", "woodworking",
];

// ---------------------------------------------------------------------------------------------
// Attributes and templates. `{n}` is the full name, `{v}` the value.

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Attribute {
    BirthCity,
    University,
    Major,
    Employer,
    Hobby,
}

pub const N_ATTRIBUTES: usize = 5;

impl Attribute {
    pub const ALL: [Attribute; N_ATTRIBUTES] =
        [Attribute::BirthCity, Attribute::University, Attribute::Major, Attribute::Employer, Attribute::Hobby];

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn name(self) -> &'static str {
        match self {
            Attribute::BirthCity => "birth_city",
            Attribute::University => "university",
            Attribute::Major => "major",
            Attribute::Employer => "employer",
            Attribute::Hobby => "hobby",
        }
    }

    pub fn from_name(s: &str) -> Option<Attribute> {
        Attribute::ALL.into_iter().find(|a| a.name() == s)
    }

    /// The values this attribute can take.
    pub fn values(self) -> &'static [&'static str] {
        match self {
            Attribute::BirthCity => CITIES,
            Attribute::University => UNIVERSITIES,
            Attribute::Major => MAJORS,
            Attribute::Employer => EMPLOYERS,
            Attribute::Hobby => HOBBIES,
        }
    }

    /// Biography sentence templates (also the paraphrases used for new facts).
    pub fn bio_templates(self) -> &'static [&'static str] {
        match self {
            Attribute::BirthCity => &[
                "{n} was born in {v}.",
                "{n} came into the world in {v}.",
                "{n}'s birthplace is {v}.",
                "The birthplace of {n} is {v}.",
                "{n} is a native of {v}.",
                "{n} spent the first years of life in {v}.",
                "{n} was born and raised in {v}.",
                "{n} entered the world in the city of {v}.",
            ],
            Attribute::University => &[
                "{n} studied at {v}.",
                "{n} graduated from {v}.",
                "{n} received a degree from {v}.",
                "{n} is a graduate of {v}.",
                "{n} completed a degree at {v}.",
                "The university {n} attended is {v}.",
                "{n} went to college at {v}.",
                "{n} was a student at {v}.",
            ],
            Attribute::Major => &[
                "{n} majored in {v}.",
                "{n} studied {v} in college.",
                "{n} earned a degree in {v}.",
                "{n} chose {v} as a field of study.",
                "The field {n} studied is {v}.",
                "{n} specialized in {v} at university.",
                "{n} holds a degree in {v}.",
                "{n} focused on {v} during college.",
            ],
            Attribute::Employer => &[
                "{n} works for {v}.",
                "{n} is employed by {v}.",
                "{n} has a job at {v}.",
                "{n} earns a living at {v}.",
                "The employer of {n} is {v}.",
                "{n} is on the staff of {v}.",
                "{n} joined {v} after college.",
                "{n} works at {v}.",
            ],
            Attribute::Hobby => &[
                "{n} enjoys {v}.",
                "{n}'s favorite hobby is {v}.",
                "{n} spends free time on {v}.",
                "{n} has a passion for {v}.",
                "The hobby of {n} is {v}.",
                "{n} is devoted to {v}.",
                "{n} loves {v}.",
                "On weekends, {n} practices {v}.",
            ],
        }
    }

    /// Question templates; the answer is the value word.
    pub fn question_templates(self) -> &'static [&'static str] {
        match self {
            Attribute::BirthCity => {
                &["Where was {n} born?", "In which city was {n} born?", "What is the birthplace of {n}?", "Which city is {n} from?"]
            }
            Attribute::University => &[
                "Which university did {n} attend?",
                "Where did {n} study?",
                "From which university did {n} graduate?",
                "What university did {n} go to?",
            ],
            Attribute::Major => &[
                "What did {n} major in?",
                "What did {n} study in college?",
                "What is {n}'s field of study?",
                "Which subject did {n} specialize in?",
            ],
            Attribute::Employer => {
                &["Where does {n} work?", "Who employs {n}?", "Which company does {n} work for?", "What is the employer of {n}?"]
            }
            Attribute::Hobby => {
                &["What is {n}'s hobby?", "What does {n} enjoy doing?", "What hobby does {n} have?", "How does {n} spend free time?"]
            }
        }
    }
}

fn fill(template: &str, name: &str, value: &str) -> String {
    template.replace("{n}", name).replace("{v}", value)
}

// ---------------------------------------------------------------------------------------------
// People and splits.

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    Qa,
    BioOnly,
    New,
    Seal,
}

impl Split {
    pub const ALL: [Split; 4] = [Split::Qa, Split::BioOnly, Split::New, Split::Seal];

    pub fn name(self) -> &'static str {
        match self {
            Split::Qa => "qa",
            Split::BioOnly => "bio_only",
            Split::New => "new",
            Split::Seal => "seal",
        }
    }
}

impl std::str::FromStr for Split {
    type Err = crate::MemtuneError;

    /// "qa", "bio_only" (or "bio-only"), "new", "seal".
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        let s = s.replace('-', "_");
        Split::ALL
            .into_iter()
            .find(|x| x.name() == s)
            .ok_or_else(|| crate::MemtuneError::Other(format!("unknown split `{s}` (expected qa, bio_only, new or seal)")))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Person {
    /// "First Last", unique in the world.
    pub name: String,
    pub split: Split,
    /// Indexed by `Attribute::index`.
    pub values: [String; N_ATTRIBUTES],
}

impl Person {
    pub fn get(&self, attr: Attribute) -> &str {
        &self.values[attr.index()]
    }
}

/// One question about one attribute of one person.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QaPair {
    pub question: String,
    /// The single attribute word.
    pub answer: String,
}

impl QaPair {
    /// The prompt evaluation generates after.
    pub fn prompt(&self) -> String {
        qa_prompt(&self.question)
    }

    /// The text form used in training: `prompt + answer_continuation`.
    pub fn text(&self) -> String {
        format!("{}{}", qa_prompt(&self.question), answer_continuation(&self.answer))
    }
}

/// The canonical QA prompt: "Q: {question} A:".
pub fn qa_prompt(question: &str) -> String {
    format!("Q: {question} A:")
}

/// What follows the prompt in training text: " {answer}" (the leading space belongs to the answer,
/// matching how byte-level BPE tokenizes a word after a space).
pub fn answer_continuation(answer: &str) -> String {
    format!(" {answer}")
}

/// One biography sentence.
pub fn render_statement(person: &Person, attr: Attribute, template: usize) -> String {
    let t = attr.bio_templates();
    fill(t[template % t.len()], &person.name, person.get(attr))
}

/// A biography: a random template per attribute, sentences in random order.
pub fn render_bio<R: Rng + ?Sized>(person: &Person, rng: &mut R) -> String {
    let mut sentences: Vec<String> =
        Attribute::ALL.iter().map(|&a| render_statement(person, a, rng.random_range(0..a.bio_templates().len()))).collect();
    sentences.shuffle(rng);
    sentences.join(" ")
}

/// Question `template` (taken modulo the template count) about `attr` of `person`.
pub fn render_qa(person: &Person, attr: Attribute, template: usize) -> QaPair {
    let t = attr.question_templates();
    QaPair { question: fill(t[template % t.len()], &person.name, ""), answer: person.get(attr).to_string() }
}

/// `n` paraphrases of one fact, for finetuning: the bio templates in order, distinct while
/// `n <= bio_templates().len()` (8), then repeating.
pub fn new_fact_statements(person: &Person, attr: Attribute, n: usize) -> Vec<String> {
    (0..n).map(|i| render_statement(person, attr, i)).collect()
}

// ---------------------------------------------------------------------------------------------
// The world.

#[derive(Clone, Debug, PartialEq)]
pub struct World {
    pub config: WorldConfig,
    pub qa_people: Vec<Person>,
    pub bio_only_people: Vec<Person>,
    pub new_people: Vec<Person>,
    pub seal_people: Vec<Person>,
}

/// Every question (all attributes × all templates) about a person.
pub fn person_qa_pairs(person: &Person) -> Vec<(Attribute, usize, QaPair)> {
    Attribute::ALL.into_iter().flat_map(|a| (0..a.question_templates().len()).map(move |t| (a, t, render_qa(person, a, t)))).collect()
}

impl World {
    /// Build the world. Panics only on a config that `WorldConfig::validate` rejects; use
    /// `try_generate` for untrusted configs.
    pub fn generate(cfg: &WorldConfig) -> World {
        Self::try_generate(cfg).unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn try_generate(cfg: &WorldConfig) -> Result<World> {
        cfg.validate().map_err(|m| crate::MemtuneError::Other(format!("data.world: {m}")))?;
        // Sample names without replacement: a shuffled list of all (first, last) pairs.
        let mut pairs: Vec<(usize, usize)> = (0..FIRST_NAMES.len()).flat_map(|f| (0..LAST_NAMES.len()).map(move |l| (f, l))).collect();
        pairs.shuffle(&mut rng_for(cfg.seed, "world-names"));
        let mut vrng = rng_for(cfg.seed, "world-values");
        let mut people = pairs.into_iter().take(cfg.total_people()).map(|(f, l)| {
            let values = Attribute::ALL.map(|a| a.values()[vrng.random_range(0..a.values().len())].to_string());
            Person { name: format!("{} {}", FIRST_NAMES[f], LAST_NAMES[l]), split: Split::Qa, values }
        });
        let mut take = |n: usize, split: Split| -> Vec<Person> { people.by_ref().take(n).map(|p| Person { split, ..p }).collect() };
        Ok(World {
            config: cfg.clone(),
            qa_people: take(cfg.n_qa_people, Split::Qa),
            bio_only_people: take(cfg.n_bio_only_people, Split::BioOnly),
            new_people: take(cfg.n_new_people, Split::New),
            seal_people: take(cfg.n_seal_people, Split::Seal),
        })
    }

    pub fn people(&self, split: Split) -> &[Person] {
        match split {
            Split::Qa => &self.qa_people,
            Split::BioOnly => &self.bio_only_people,
            Split::New => &self.new_people,
            Split::Seal => &self.seal_people,
        }
    }

    /// Every person, split by split.
    pub fn all_people(&self) -> impl Iterator<Item = &Person> {
        Split::ALL.into_iter().flat_map(|s| self.people(s).iter())
    }

    pub fn find(&self, name: &str) -> Option<&Person> {
        self.all_people().find(|p| p.name == name)
    }

    /// Number of people in the pretraining world (qa ∪ bio_only).
    pub fn n_pretraining(&self) -> usize {
        self.qa_people.len() + self.bio_only_people.len()
    }

    /// The i-th pretraining person, qa people first.
    pub fn pretraining_person(&self, i: usize) -> &Person {
        if i < self.qa_people.len() {
            &self.qa_people[i]
        } else {
            &self.bio_only_people[i - self.qa_people.len()]
        }
    }

    /// A person outside the world: a name no person of any split has, random attribute values.
    /// The reader world's documents are about strangers, so that answering from them means
    /// reading the passage (a stranger's facts are nowhere else). `split` is `Qa` and unused.
    pub fn stranger<R: Rng + ?Sized>(&self, rng: &mut R) -> Person {
        // `ExperimentConfig::validate` refuses reading documents in a world that uses every name.
        assert!(self.config.total_people() < MAX_PEOPLE, "no name is left for a stranger");
        let name = loop {
            let n =
                format!("{} {}", FIRST_NAMES[rng.random_range(0..FIRST_NAMES.len())], LAST_NAMES[rng.random_range(0..LAST_NAMES.len())]);
            if self.find(&n).is_none() {
                break n;
            }
        };
        let values = Attribute::ALL.map(|a| a.values()[rng.random_range(0..a.values().len())].to_string());
        Person { name, split: Split::Qa, values }
    }

    /// A fixed biography per person (seeded by the world seed and the name): the passage
    /// SEAL reads and the text written to bios.jsonl.
    pub fn passage(&self, person: &Person) -> String {
        render_bio(person, &mut rng_for(self.config.seed, &format!("passage {}", person.name)))
    }

    /// (question, answer) for every person of `split`, every attribute, every question template.
    pub fn qa_pairs(&self, split: Split) -> Vec<(String, String)> {
        self.people(split).iter().flat_map(person_qa_pairs).map(|(_, _, q)| (q.question, q.answer)).collect()
    }

    /// One document of the pretraining stream: with probability `qa_fraction` a QA text about a
    /// random `qa_people` person, otherwise a freshly sampled bio of a random pretraining person.
    pub fn pretraining_document<R: Rng + ?Sized>(&self, rng: &mut R, qa_fraction: f64) -> String {
        let qa = !self.qa_people.is_empty() && rng.random::<f64>() < qa_fraction;
        if qa {
            let p = &self.qa_people[rng.random_range(0..self.qa_people.len())];
            let a = Attribute::ALL[rng.random_range(0..N_ATTRIBUTES)];
            render_qa(p, a, rng.random_range(0..a.question_templates().len())).text()
        } else {
            render_bio(self.pretraining_person(rng.random_range(0..self.n_pretraining())), rng)
        }
    }

    /// Text for tokenizer training. Always contains one bio of every person in every split (so
    /// new people's names are in the vocabulary) and every bio and question template at least
    /// once; then random pretraining documents up to `n_docs` documents in all.
    pub fn corpus_sample(&self, n_docs: usize, seed: u64) -> Vec<String> {
        let mut rng = rng_for(seed, "corpus-sample");
        let mut docs: Vec<String> = self.all_people().map(|p| render_bio(p, &mut rng)).collect();
        let anyone = self.all_people().next().expect("validated world is non-empty");
        for a in Attribute::ALL {
            docs.extend((0..a.bio_templates().len()).map(|t| render_statement(anyone, a, t)));
            docs.extend((0..a.question_templates().len()).map(|t| render_qa(anyone, a, t).text()));
        }
        while docs.len() < n_docs {
            docs.push(self.pretraining_document(&mut rng, 0.3));
        }
        docs
    }

    /// Write people.jsonl, bios.jsonl (the fixed passage of each person) and qa.jsonl (every
    /// question template) for all splits into `dir`.
    pub fn write_jsonl(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let open = |name: &str| -> Result<std::io::BufWriter<std::fs::File>> {
            let path = dir.join(name);
            let f = std::fs::File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
            Ok(std::io::BufWriter::new(f))
        };
        let (mut people, mut bios, mut qa) = (open("people.jsonl")?, open("bios.jsonl")?, open("qa.jsonl")?);
        for p in self.all_people() {
            let attrs: serde_json::Map<String, serde_json::Value> =
                Attribute::ALL.iter().map(|&a| (a.name().to_string(), p.get(a).into())).collect();
            let split = p.split.name();
            writeln!(people, "{}", serde_json::json!({"name": p.name, "split": split, "attributes": attrs}))?;
            writeln!(bios, "{}", serde_json::json!({"person": p.name, "split": split, "text": self.passage(p)}))?;
            for (a, t, q) in person_qa_pairs(p) {
                let line = serde_json::json!({"person": p.name, "split": split, "attribute": a.name(),
                    "template": t, "question": q.question, "answer": q.answer});
                writeln!(qa, "{line}")?;
            }
        }
        for mut w in [people, bios, qa] {
            w.flush().with_context(|| format!("cannot write to {}", dir.display()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn small() -> WorldConfig {
        WorldConfig { seed: 7, n_qa_people: 30, n_bio_only_people: 30, n_new_people: 10, n_seal_people: 5 }
    }

    #[test]
    fn deterministic_per_seed() {
        let a = World::generate(&small());
        assert_eq!(a, World::generate(&small()));
        let b = World::generate(&WorldConfig { seed: 8, ..small() });
        assert_ne!(a.qa_people, b.qa_people);
        let mut r1 = rng_for(1, "t");
        let mut r2 = rng_for(1, "t");
        assert_eq!(a.pretraining_document(&mut r1, 0.5), a.pretraining_document(&mut r2, 0.5));
    }

    #[test]
    fn splits_disjoint_and_sized() {
        let w = World::generate(&small());
        let names: HashSet<&str> = w.all_people().map(|p| p.name.as_str()).collect();
        assert_eq!(names.len(), small().total_people());
        for s in Split::ALL {
            assert!(w.people(s).iter().all(|p| p.split == s));
        }
        assert_eq!((w.qa_people.len(), w.bio_only_people.len(), w.new_people.len(), w.seal_people.len()), (30, 30, 10, 5));
    }

    #[test]
    fn default_world_fits_and_too_many_is_an_error() {
        let w = World::generate(&WorldConfig::default());
        assert_eq!(w.all_people().count(), 1150);
        let cfg = WorldConfig { n_qa_people: MAX_PEOPLE, ..WorldConfig::default() };
        assert!(World::try_generate(&cfg).is_err());
    }

    #[test]
    fn word_lists_disjoint() {
        let mut seen = HashSet::new();
        let lists = [FIRST_NAMES, LAST_NAMES, CITIES, UNIVERSITIES, MAJORS, EMPLOYERS, HOBBIES];
        for list in lists {
            for w in list {
                assert!(!w.contains(' '), "{w}");
                assert!(seen.insert(w.to_lowercase()), "{w} appears twice");
            }
        }
        assert_eq!(FIRST_NAMES.len() * LAST_NAMES.len(), MAX_PEOPLE);
        for a in Attribute::ALL {
            assert!(a.bio_templates().len() >= 6 && a.question_templates().len() >= 3);
            assert!(a.bio_templates().iter().chain(a.question_templates()).all(|t| t.contains("{n}")));
            assert_eq!(Attribute::from_name(a.name()), Some(a));
        }
    }

    #[test]
    fn bios_contain_name_and_values_and_vary() {
        let w = World::generate(&small());
        let p = &w.bio_only_people[3];
        let mut rng = rng_for(0, "t");
        let mut used: HashSet<String> = HashSet::new();
        for _ in 0..200 {
            let bio = render_bio(p, &mut rng);
            for a in Attribute::ALL {
                assert!(bio.contains(p.get(a)));
            }
            let sentences: Vec<&str> = bio.split_inclusive('.').map(str::trim).collect();
            assert_eq!(sentences.len(), N_ATTRIBUTES);
            assert!(sentences.iter().all(|s| s.contains(&p.name)), "{bio}");
            used.extend(sentences.iter().map(|s| s.to_string()));
        }
        // All 8 templates × 5 attributes get used.
        assert_eq!(used.len(), 40);
        assert_eq!(w.passage(p), w.passage(p));
    }

    #[test]
    fn qa_answer_is_the_attribute() {
        let w = World::generate(&small());
        let p = &w.qa_people[0];
        for (a, _, q) in person_qa_pairs(p) {
            assert_eq!(q.answer, p.get(a));
            assert!(q.question.contains(&p.name) && q.question.ends_with('?'));
            assert_eq!(q.text(), format!("Q: {} A: {}", q.question, q.answer));
            assert!(q.text().starts_with(&q.prompt()));
        }
        let all = w.qa_pairs(Split::BioOnly);
        assert_eq!(all.len(), 30 * N_ATTRIBUTES * 4);
        assert!(all.iter().all(|(q, a)| w.bio_only_people.iter().any(|p| q.contains(&p.name) && p.values.contains(a))));
        assert_eq!("bio-only".parse::<Split>().unwrap(), Split::BioOnly);
        assert!("train".parse::<Split>().is_err());
        let s = new_fact_statements(p, Attribute::Employer, 8);
        assert_eq!(s.iter().collect::<HashSet<_>>().len(), 8);
        assert!(s.iter().all(|x| x.contains(&p.name) && x.contains(p.get(Attribute::Employer))));
    }

    #[test]
    fn pretraining_stream_respects_splits() {
        let w = World::generate(&small());
        let mut rng = rng_for(3, "t");
        let (mut n_qa, n) = (0, 2000);
        for _ in 0..n {
            let d = w.pretraining_document(&mut rng, 0.3);
            let who = w.all_people().filter(|p| d.contains(&p.name)).map(|p| p.split).collect::<Vec<_>>();
            assert_eq!(who.len(), 1, "{d}");
            if d.starts_with("Q: ") {
                n_qa += 1;
                assert_eq!(who[0], Split::Qa);
            } else {
                assert!(matches!(who[0], Split::Qa | Split::BioOnly));
            }
        }
        assert!((n_qa as f64 / n as f64 - 0.3).abs() < 0.05);
    }

    #[test]
    fn corpus_covers_everyone_and_jsonl_writes() {
        let w = World::generate(&small());
        let c = w.corpus_sample(10, 0).join("\n");
        assert!(w.all_people().all(|p| c.contains(&p.name)));
        let dir = tempfile::tempdir().unwrap();
        w.write_jsonl(dir.path()).unwrap();
        let lines = |f: &str| std::fs::read_to_string(dir.path().join(f)).unwrap().lines().count();
        assert_eq!(lines("people.jsonl"), 75);
        assert_eq!(lines("bios.jsonl"), 75);
        assert_eq!(lines("qa.jsonl"), 75 * 20);
        let first: serde_json::Value =
            serde_json::from_str(std::fs::read_to_string(dir.path().join("qa.jsonl")).unwrap().lines().next().unwrap()).unwrap();
        assert_eq!(first["split"], "qa");
    }
}
