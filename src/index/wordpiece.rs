//! BERT's uncased WordPiece tokenizer, as Hugging Face `tokenizers` runs it
//! for all-MiniLM-L6-v2: the normaliser (controls dropped, whitespace to
//! spaces, CJK ideographs spaced, accents stripped, lower case), the
//! pre-tokenizer (whitespace and punctuation) and greedy longest-match
//! WordPiece. Both built-in models read text through it:
//! `minilm-static` (`static_embedder.rs`) and the exact `minilm`
//! (`minilm_embedder.rs`). The browser's copy is JavaScript
//! (`src/wasm/embedders.js`); both reproduce the reference's ids on
//! `models/minilm-static/check.json`.

use std::collections::HashMap;

use unicode_normalization::UnicodeNormalization;
use unicode_properties::{GeneralCategory, GeneralCategoryGroup, UnicodeGeneralCategory};

const MAX_WORD_CHARS: usize = 100;

fn is_cjk(c: char) -> bool {
    matches!(u32::from(c),
        0x4E00..=0x9FFF | 0x3400..=0x4DBF | 0x20000..=0x2A6DF | 0x2A700..=0x2B73F
        | 0x2B740..=0x2B81F | 0x2B920..=0x2CEAF | 0xF900..=0xFAFF | 0x2F800..=0x2FA1F)
}

fn is_control(c: char) -> bool {
    matches!(
        c.general_category(),
        GeneralCategory::Control | GeneralCategory::Format | GeneralCategory::PrivateUse
    )
}

fn is_punctuation(c: char) -> bool {
    c.is_ascii_punctuation() || c.general_category_group() == GeneralCategoryGroup::Punctuation
}

/// BERT's normaliser: control characters dropped, whitespace to spaces,
/// CJK ideographs spaced, accents stripped (NFD without nonspacing marks),
/// lower case.
fn normalize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        // Control characters go first: U+0085 and U+000B are whitespace to
        // Rust but controls to BERT, which drops them.
        let kept_control = matches!(c, '\t' | '\n' | '\r');
        if c == '\0' || c == '\u{FFFD}' || (is_control(c) && !kept_control) {
            continue;
        }
        if c.is_whitespace() {
            out.push(' ');
        } else if is_cjk(c) {
            out.push(' ');
            out.push(c);
            out.push(' ');
        } else {
            out.push(c);
        }
    }
    out.nfd()
        .filter(|c| c.general_category() != GeneralCategory::NonspacingMark)
        .collect::<String>()
        .to_lowercase()
}

/// Words: split on whitespace, every punctuation character its own word.
fn pre_tokenize(text: &str) -> Vec<&str> {
    let mut words = Vec::new();
    let mut start = None;
    for (at, c) in text.char_indices() {
        if c.is_whitespace() || is_punctuation(c) {
            if let Some(from) = start.take() {
                words.push(&text[from..at]);
            }
            if !c.is_whitespace() {
                words.push(&text[at..at + c.len_utf8()]);
            }
        } else if start.is_none() {
            start = Some(at);
        }
    }
    if let Some(from) = start {
        words.push(&text[from..]);
    }
    words
}

/// A WordPiece vocabulary, ready to tokenize.
pub struct WordPiece {
    vocab: HashMap<String, u32>,
    unknown: u32,
}

impl WordPiece {
    /// The vocabulary of `vocab.txt`: one token per line, in id order.
    pub fn from_vocab(vocab: &str) -> Result<Self, String> {
        let vocab: HashMap<String, u32> = vocab
            .lines()
            .enumerate()
            .map(|(id, token)| (token.to_string(), id as u32))
            .collect();
        let unknown = *vocab
            .get("[UNK]")
            .ok_or("the vocabulary has no [UNK] token")?;
        Ok(Self { vocab, unknown })
    }

    /// The number of tokens.
    pub fn vocabulary_size(&self) -> usize {
        self.vocab.len()
    }

    /// The WordPiece ids of `text` (no `[CLS]`/`[SEP]`), at most `limit`.
    pub fn token_ids(&self, text: &str, limit: usize) -> Vec<u32> {
        let normalized = normalize(text);
        let mut ids = Vec::new();
        for word in pre_tokenize(&normalized) {
            let chars: Vec<(usize, char)> = word.char_indices().collect();
            if chars.len() > MAX_WORD_CHARS {
                ids.push(self.unknown);
                continue;
            }
            let mut pieces = Vec::new();
            let mut start = 0;
            let mut piece = String::new();
            while start < chars.len() {
                let mut end = chars.len();
                let mut found = None;
                while start < end {
                    let to = chars.get(end).map_or(word.len(), |(at, _)| *at);
                    piece.clear();
                    if start > 0 {
                        piece.push_str("##");
                    }
                    piece.push_str(&word[chars[start].0..to]);
                    found = self.vocab.get(&piece).copied();
                    if found.is_some() {
                        break;
                    }
                    end -= 1;
                }
                match found {
                    Some(id) => pieces.push(id),
                    None => {
                        pieces.clear();
                        pieces.push(self.unknown);
                        break;
                    }
                }
                start = end;
            }
            ids.extend(pieces);
            if ids.len() >= limit {
                ids.truncate(limit);
                break;
            }
        }
        ids
    }
}
