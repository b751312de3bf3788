//! A thinking model's streamed text split as it arrives into its reasoning
//! (inside `<think>…</think>`) and its answer, as vLLM's and llama-server's
//! reasoning parsers send them (`reasoning_content` and `content`).
//! RoboBrain's `<answer>` tags are dropped; a tag split across pieces is
//! held back until it is whole.

const THINK: &str = "<think>";
const END_THINK: &str = "</think>";
const ANSWER: &str = "<answer>";
const END_ANSWER: &str = "</answer>";
const TAGS: [&str; 4] = [THINK, END_THINK, ANSWER, END_ANSWER];

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Delta {
    pub reasoning: String,
    pub content: String,
}

impl Delta {
    pub fn is_empty(&self) -> bool {
        self.reasoning.is_empty() && self.content.is_empty()
    }
}

#[derive(Debug)]
pub struct ThinkSplitter {
    thinking: bool,
    /// Text not yet sent (a possible tag's start).
    pending: String,
    /// The answer has not started: its leading blank lines are dropped.
    answer_fresh: bool,
}

impl ThinkSplitter {
    /// `opened`: the prompt itself ended in `<think>`, so the reply starts
    /// inside the reasoning.
    pub fn new(opened: bool) -> Self {
        ThinkSplitter {
            thinking: opened,
            pending: String::new(),
            answer_fresh: true,
        }
    }

    pub fn push(&mut self, piece: &str) -> Delta {
        self.pending.push_str(piece);
        let mut out = Delta::default();
        loop {
            let hit = TAGS
                .iter()
                .filter_map(|t| self.pending.find(t).map(|i| (i, *t)))
                .min();
            match hit {
                Some((i, tag)) => {
                    let before: String = self.pending.drain(..i).collect();
                    self.emit(&before, &mut out);
                    self.pending.drain(..tag.len());
                    match tag {
                        THINK => self.thinking = true,
                        END_THINK => {
                            self.thinking = false;
                            self.answer_fresh = true;
                        }
                        _ => {}
                    }
                }
                None => break,
            }
        }
        // Keep back the longest tail that could grow into a tag.
        let keep = TAGS
            .iter()
            .flat_map(|t| (1..t.len()).map(move |n| &t[..n]))
            .filter(|p| self.pending.ends_with(p))
            .map(|p| p.len())
            .max()
            .unwrap_or(0);
        let now: String = self.pending.drain(..self.pending.len() - keep).collect();
        self.emit(&now, &mut out);
        out
    }

    /// What is still held back, at the end of the reply.
    pub fn finish(&mut self) -> Delta {
        let rest = std::mem::take(&mut self.pending);
        let mut out = Delta::default();
        self.emit(&rest, &mut out);
        out
    }

    fn emit(&mut self, text: &str, out: &mut Delta) {
        if self.thinking {
            out.reasoning.push_str(text);
        } else if self.answer_fresh {
            let t = text.trim_start_matches(['\n', '\r']);
            if !t.is_empty() {
                self.answer_fresh = false;
                out.content.push_str(t);
            }
        } else {
            out.content.push_str(text);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(opened: bool, pieces: &[&str]) -> (String, String) {
        let mut s = ThinkSplitter::new(opened);
        let mut all = Delta::default();
        for p in pieces {
            let d = s.push(p);
            all.reasoning += &d.reasoning;
            all.content += &d.content;
        }
        let d = s.finish();
        (all.reasoning + &d.reasoning, all.content + &d.content)
    }

    #[test]
    fn tags_split_across_pieces_are_found() {
        let (r, c) = run(
            false,
            &["<th", "ink>\nLet me", " see.</th", "ink>\n\nParis", "."],
        );
        assert_eq!(r, "\nLet me see.");
        assert_eq!(c, "Paris.");
    }

    #[test]
    fn a_prompt_that_opened_thinking_starts_in_reasoning() {
        let (r, c) = run(true, &["hmm", "</think><answer>4</answer>"]);
        assert_eq!((r.as_str(), c.as_str()), ("hmm", "4"));
    }

    #[test]
    fn plain_text_and_near_tags_pass_through() {
        let (r, c) = run(false, &["a <b> and <thin", "g> x"]);
        assert_eq!((r.as_str(), c.as_str()), ("", "a <b> and <thing> x"));
    }
}
