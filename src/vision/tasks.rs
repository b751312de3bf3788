//! RoboBrain's task modes: the prompt each one sends (worded exactly as
//! RoboBrain 2.0's and 2.5's own inference code word it — the two differ),
//! the thinking switch of the 2.0 7B/32B models, and tolerant parsing of
//! what comes back — `<think>` / `<answer>` tags (also unclosed, repeated
//! or nested) and points, boxes and trajectories in the forms the model
//! writes them: 2.0 in pixels of its resized frame or normalized, 2.5 in
//! thousandths of the image with a depth per trajectory point.

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    #[default]
    General,
    Pointing,
    Affordance,
    Trajectory,
    Grounding,
    /// RoboBrain 2.5: how far a task has come across several frames
    /// (Robo-Dopamine's progress estimation).
    Progress,
}

impl Task {
    pub const ALL: [Task; 6] = [
        Task::General,
        Task::Pointing,
        Task::Affordance,
        Task::Trajectory,
        Task::Grounding,
        Task::Progress,
    ];

    /// The user text as RoboBrain 2.0 sends it for this task.
    pub fn prompt(self, text: &str) -> String {
        match self {
            Task::General => text.to_string(),
            Task::Pointing => format!(
                "{text}. Your answer should be formatted as a list of tuples, i.e. [(x1, y1), (x2, y2), ...], where each tuple contains the x and y coordinates of a point satisfying the conditions above. The coordinates should indicate the normalized pixel locations of the points in the image."
            ),
            Task::Affordance => format!(
                "You are a robot using the joint control. The task is \"{text}\". Please predict a possible affordance area of the end effector."
            ),
            Task::Trajectory => format!(
                "You are a robot using the joint control. The task is \"{text}\". Please predict up to 10 key trajectory points to complete the task. Your answer should be formatted as a list of tuples, i.e. [[x1, y1], [x2, y2], ...], where each tuple contains the x and y coordinates of a point."
            ),
            Task::Grounding => format!(
                "Please provide the bounding box coordinate of the region this sentence describes: {text}."
            ),
            // Progress is asked frame by frame (`progress_message`).
            Task::Progress => text.to_string(),
        }
    }

    /// What the task asks the user to type.
    pub fn hint(self) -> &'static str {
        match self {
            Task::General => "Ask anything about the image",
            Task::Pointing => "What to point at, e.g. \"free spots between the two mugs\"",
            Task::Affordance => "The action, e.g. \"hold the cup\"",
            Task::Trajectory => "The goal, e.g. \"reach for the banana on the plate\"",
            Task::Grounding => "The region, e.g. \"the person wearing a red hat\"",
            Task::Progress => "The task the frames show, e.g. \"organize the table\"",
        }
    }

    /// Whether `n` images suit the task: pointing, affordance, trajectory
    /// and grounding read one, progress a sequence of two or more frames,
    /// general any number. The error says what to attach.
    pub fn check_images(self, n: usize) -> Result<(), String> {
        match self {
            Task::General => Ok(()),
            Task::Progress if n >= 2 => Ok(()),
            Task::Progress => Err(format!(
                "the progress task needs a sequence of two or more frames, {n} given"
            )),
            _ if n == 1 => Ok(()),
            _ => Err(format!(
                "the {self} task needs exactly one image, {n} given"
            )),
        }
    }
}

impl fmt::Display for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Task::General => "general",
            Task::Pointing => "pointing",
            Task::Affordance => "affordance",
            Task::Trajectory => "trajectory",
            Task::Grounding => "grounding",
            Task::Progress => "progress",
        })
    }
}

impl FromStr for Task {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Task::ALL
            .into_iter()
            .find(|t| t.to_string().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| {
                format!("unknown task '{s}' (general, pointing, affordance, trajectory, grounding, progress)")
            })
    }
}

/// Which RoboBrain generation a prompt is worded for and an answer read as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum Family {
    /// RoboBrain 2.0 (Qwen2.5-VL): points and boxes in the model's resized
    /// frame (or normalized), 2-D trajectories.
    #[default]
    RoboBrain2,
    /// RoboBrain 2.5 (Qwen3-VL): coordinates in thousandths of the image
    /// (0–1000), trajectories of end-effector waypoints with depth.
    RoboBrain25,
}

impl Family {
    /// The task modes the family's inference code defines (2.5's has no
    /// separate affordance mode: it points at affordances; its progress
    /// estimation over frames is Robo-Dopamine's).
    pub fn tasks(self) -> &'static [Task] {
        match self {
            Family::RoboBrain2 => &[
                Task::General,
                Task::Pointing,
                Task::Affordance,
                Task::Trajectory,
                Task::Grounding,
            ],
            Family::RoboBrain25 => &[
                Task::General,
                Task::Pointing,
                Task::Trajectory,
                Task::Grounding,
                Task::Progress,
            ],
        }
    }

    /// The family a server's model name says (`BAAI/RoboBrain2.5-8B-NV`,
    /// `robobrain-2.5`…): the API does not tell the architecture.
    pub fn of_model_name(name: &str) -> Family {
        let n: String = name
            .to_ascii_lowercase()
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '.')
            .collect();
        if n.contains("robobrain2.5") || n.contains("robobrain25") {
            Family::RoboBrain25
        } else {
            Family::RoboBrain2
        }
    }

    /// The family of a vision model from its architecture (`qwen3vl` is
    /// 2.5's; `qwen2vl`, Qwen2.5-VL, 2.0's).
    pub fn of_arch(arch: &str) -> Family {
        if arch.to_ascii_lowercase().starts_with("qwen3") {
            Family::RoboBrain25
        } else {
            Family::RoboBrain2
        }
    }
}

impl Task {
    /// The user text as the family's inference code sends it for this task
    /// (2.5 words pointing, trajectories and the affordance it points at
    /// its own way; see `prompt` for 2.0's).
    pub fn prompt_for(self, family: Family, text: &str) -> String {
        match (family, self) {
            (Family::RoboBrain2, t) => t.prompt(text),
            (Family::RoboBrain25, Task::General) => text.to_string(),
            (Family::RoboBrain25, Task::Pointing | Task::Affordance) => format!(
                "{text}. Please provide its 2D coordinates. Your answer should be formatted as a tuple, i.e. [(x, y)], where the tuple contains the x and y coordinates of a point satisfying the conditions above."
            ),
            (Family::RoboBrain25, Task::Trajectory) => format!(
                "Please predict 3D end-effector-centric waypoints to complete the task successfully. The task is \"{text}\". Your answer should be formatted as a list of tuples, i.e., [(x1, y1, d1), (x2, y2, d2), ...], where each tuple contains the x and y coordinates and the depth of the point."
            ),
            (Family::RoboBrain25, Task::Grounding) => format!(
                "Please provide the bounding box coordinate of the region this sentence describes: {text}."
            ),
            (Family::RoboBrain25, Task::Progress) => text.to_string(),
        }
    }
}

/// Robo-Dopamine's progress prompt (its `examples/inference.py`, the
/// reward model trained on RoboBrain 2.5), word for word: `{task}` is the
/// task, each `<image>` one of eight images — a reference start and end,
/// then the front, left-wrist and right-wrist views before and after.
const PROGRESS_PROMPT: &str = include_str!("progress_prompt.txt");

/// Pixel bound of each of the eight images of a progress step, as
/// Robo-Dopamine's inference sets its processor (76 800 pixels: 300
/// patches of 16, 75 tokens an image).
pub const PROGRESS_MAX_PIXELS: usize = 76_800;

/// One progress question: the frame it judges and its eight images.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgressStep {
    /// Index into the frames of the frame judged.
    pub frame: usize,
    pub images: [std::path::PathBuf; 8],
}

/// How a sequence of frames is asked about (Robo-Dopamine's `eval_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProgressMode {
    /// Each frame against the one before; the scores are steps that
    /// accumulate (RoboBrain 2.5's README runs it so).
    #[default]
    Incremental,
    /// Each frame against the first; the score is the progress itself
    /// (Robo-Dopamine's own example's default).
    Forward,
}

impl fmt::Display for ProgressMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProgressMode::Incremental => "incremental",
            ProgressMode::Forward => "forward",
        })
    }
}

impl FromStr for ProgressMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "incremental" => Ok(ProgressMode::Incremental),
            "forward" => Ok(ProgressMode::Forward),
            _ => Err(format!(
                "unknown progress mode '{s}' (incremental, forward)"
            )),
        }
    }
}

impl ProgressMode {
    /// The progress after a frame scored `score`, from `before` (the
    /// frame before's progress; Robo-Dopamine's arithmetic): forward, the
    /// score itself; incremental, a gain takes that share of what remained
    /// to do, a loss that share of what was done. A frame without a score
    /// leaves progress where it was (Robo-Dopamine counts it as 0).
    pub fn next(self, before: f32, score: Option<f32>) -> f32 {
        match (self, score) {
            (ProgressMode::Forward, Some(s)) => s,
            (ProgressMode::Forward, None) => before,
            (ProgressMode::Incremental, Some(s)) if s >= 0.0 => before + (1.0 - before) * s,
            (ProgressMode::Incremental, Some(s)) => before + before * s,
            (ProgressMode::Incremental, None) => before,
        }
    }
}

/// The questions a sequence of frames asks, as Robo-Dopamine's inference
/// asks them: each frame after the first is "after", against the frame
/// before it (incremental) or the first frame (forward) as "before",
/// anchored by the first frame as the reference start and the goal image
/// (or else the last frame) as the reference end. With one camera, the
/// frame stands for all three views, as its single-view usage repeats the
/// front camera.
pub fn progress_steps(
    frames: &[std::path::PathBuf],
    goal: Option<&std::path::Path>,
    mode: ProgressMode,
) -> Vec<ProgressStep> {
    let (Some(first), Some(last)) = (frames.first(), frames.last()) else {
        return Vec::new();
    };
    let end = goal.map_or_else(|| last.clone(), std::path::Path::to_path_buf);
    frames
        .iter()
        .enumerate()
        .skip(1)
        .map(|(frame, after)| {
            let before = match mode {
                ProgressMode::Forward => first,
                ProgressMode::Incremental => &frames[frame - 1],
            };
            ProgressStep {
                frame,
                images: [
                    first.clone(),
                    end.clone(),
                    before.clone(),
                    before.clone(),
                    before.clone(),
                    after.clone(),
                    after.clone(),
                    after.clone(),
                ],
            }
        })
        .collect()
}

/// The user message of one progress step: the prompt's text and its eight
/// images interleaved as content parts.
pub fn progress_message(task: &str, step: &ProgressStep) -> crate::chat::Message {
    let text = PROGRESS_PROMPT.replace("{task}", task);
    let mut parts = Vec::with_capacity(17);
    for (i, piece) in text.split("<image>").enumerate() {
        if i > 0 {
            if let Some(img) = step.images.get(i - 1) {
                parts.push(serde_json::json!({"type": "image", "path": img}));
            }
        }
        parts.push(serde_json::json!({"type": "text", "text": piece}));
    }
    crate::chat::Message {
        role: "user".into(),
        content: serde_json::Value::Array(parts),
    }
}

/// The score of a progress answer, as a fraction in [-1, 1]:
/// `<score>+NN%</score>` (the last one), read tolerantly — an unclosed
/// tag, no sign, no percent sign, a decimal; without a tag, the last signed
/// percentage in the text. `None` when the answer holds no score.
pub fn parse_score(answer: &str) -> Option<f32> {
    let number = |s: &str| -> Option<f32> {
        let s = s.trim().trim_end_matches('%').trim();
        let s = s.strip_prefix('+').unwrap_or(s);
        s.parse::<f32>().ok().filter(|v| v.is_finite())
    };
    let value = if let Some(i) = answer.rfind("<score>") {
        let rest = &answer[i + "<score>".len()..];
        let inner = rest.split("</score>").next().unwrap_or(rest);
        number(inner.lines().next().unwrap_or(""))?
    } else {
        // The last `[+-]NN[.N]%` in the text.
        let b = answer.as_bytes();
        let mut found = None;
        for (i, _) in answer.match_indices('%') {
            let mut j = i;
            while j > 0 && (b[j - 1].is_ascii_digit() || b[j - 1] == b'.') {
                j -= 1;
            }
            if j > 0 && (b[j - 1] == b'+' || b[j - 1] == b'-') {
                j -= 1;
            }
            if let Some(v) = number(&answer[j..i]) {
                found = Some(v);
            }
        }
        found?
    };
    Some((value / 100.0).clamp(-1.0, 1.0))
}

/// At most `max` frame indices of `n`, evenly spread, the first and the
/// last always among them.
pub fn sample_frames(n: usize, max: usize) -> Vec<usize> {
    let max = max.max(2);
    if n <= max {
        return (0..n).collect();
    }
    let mut out: Vec<usize> = (0..max)
        .map(|i| (i * (n - 1) + (max - 1) / 2) / (max - 1))
        .collect();
    out.dedup();
    out
}

/// Whether a model answers with a `<think>` section when asked: RoboBrain
/// 2.0's 7B and 32B do, the 3B does not. Decided from the model's own
/// metadata (its names, `general.name`/`basename`/`finetune`, as the
/// converters write them from the checkpoint) and its size (text-model
/// parameters), never from what its file happens to be called. `None` for
/// models that are not RoboBrain.
pub fn thinking_for<'a>(
    mut names: impl Iterator<Item = &'a str>,
    text_params: u64,
) -> Option<bool> {
    if !names.any(|n| n.to_ascii_lowercase().contains("robobrain")) {
        return None;
    }
    Some(text_params > 5_000_000_000)
}

/// Text appended after the rendered prompt (after `assistant\n`), as
/// RoboBrain's code does: `<think>` to think, `<think></think><answer>` to
/// skip thinking on a model that could; nothing for other models.
pub fn thinking_suffix(supports: Option<bool>, enable: bool) -> &'static str {
    match (supports, enable) {
        (Some(true), true) => "<think>",
        (Some(true), false) => "<think></think><answer>",
        _ => "",
    }
}

/// A reply split into its thinking and its answer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Split {
    pub thinking: String,
    pub answer: String,
}

fn strip_tags(s: &str, tags: &[&str]) -> String {
    let mut out = s.to_string();
    for t in tags {
        out = out.replace(t, "");
    }
    out.trim().to_string()
}

/// Splits a reply at its last `</think>`: before it is thinking, after it
/// the answer (its `<answer>` tags removed). No `</think>`: an `<answer>`
/// tag starts the answer; else a reply that began thinking (`<think>`
/// without an end, or `thinking` set because the prompt opened it) is all
/// thinking, and anything else is all answer.
pub fn split_thinking(reply: &str, prompt_opened_think: bool) -> Split {
    const TAGS: [&str; 4] = ["<think>", "</think>", "<answer>", "</answer>"];
    if let Some(i) = reply.rfind("</think>") {
        return Split {
            thinking: strip_tags(&reply[..i], &TAGS),
            answer: strip_tags(&reply[i + "</think>".len()..], &TAGS),
        };
    }
    if let Some(i) = reply.find("<answer>") {
        return Split {
            thinking: strip_tags(&reply[..i], &TAGS),
            answer: strip_tags(&reply[i..], &TAGS),
        };
    }
    if prompt_opened_think || reply.trim_start().starts_with("<think>") {
        return Split {
            thinking: strip_tags(reply, &TAGS),
            answer: String::new(),
        };
    }
    Split {
        thinking: String::new(),
        answer: strip_tags(reply, &TAGS),
    }
}

/// Coordinates found in an answer, in the units the model wrote them.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Shapes {
    pub points: Vec<[f32; 2]>,
    /// x1, y1, x2, y2.
    pub boxes: Vec<[f32; 4]>,
    pub trajectory: Vec<[f32; 2]>,
    /// The depth of each trajectory point, in metres, where the model gave
    /// one (RoboBrain 2.5's 3-D traces); empty otherwise.
    pub depths: Vec<f32>,
    /// The depth of each point, in metres, where the model gave one
    /// (RoboBrain 2.5's 3-D spatial referring: `(x, y, d)`); empty
    /// otherwise.
    pub point_depths: Vec<f32>,
    /// Every value lies in [0, 1] and some are fractions: the model wrote
    /// normalized coordinates rather than pixels.
    pub normalized: bool,
    /// Coordinates in thousandths of the image (RoboBrain 2.5).
    pub per_mille: bool,
}

impl Shapes {
    pub fn is_empty(&self) -> bool {
        self.points.is_empty() && self.boxes.is_empty() && self.trajectory.is_empty()
    }

    /// Maps the shapes into an image of `original` size (width, height):
    /// pixel coordinates are in the model's resized frame (`resized`);
    /// normalized ones scale by the original size.
    pub fn to_image(&self, resized: (usize, usize), original: (usize, usize)) -> Shapes {
        let (sx, sy) = if self.per_mille {
            (original.0 as f32 / 1000.0, original.1 as f32 / 1000.0)
        } else if self.normalized {
            (original.0 as f32, original.1 as f32)
        } else {
            (
                original.0 as f32 / resized.0.max(1) as f32,
                original.1 as f32 / resized.1.max(1) as f32,
            )
        };
        let clamp = |x: f32, y: f32| {
            [
                (x * sx).clamp(0.0, original.0 as f32),
                (y * sy).clamp(0.0, original.1 as f32),
            ]
        };
        Shapes {
            points: self.points.iter().map(|p| clamp(p[0], p[1])).collect(),
            boxes: self
                .boxes
                .iter()
                .map(|b| {
                    let [x1, y1] = clamp(b[0].min(b[2]), b[1].min(b[3]));
                    let [x2, y2] = clamp(b[0].max(b[2]), b[1].max(b[3]));
                    [x1, y1, x2, y2]
                })
                .collect(),
            trajectory: self.trajectory.iter().map(|p| clamp(p[0], p[1])).collect(),
            depths: self.depths.clone(),
            point_depths: self.point_depths.clone(),
            normalized: false,
            per_mille: false,
        }
    }
}

/// A pinhole camera's intrinsics, in pixels of the original image: focal
/// lengths and principal point.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Intrinsics {
    pub fx: f32,
    pub fy: f32,
    pub cx: f32,
    pub cy: f32,
}

impl Intrinsics {
    /// Parses `fx,fy,cx,cy` (positive focal lengths).
    pub fn parse(s: &str) -> Result<Self, String> {
        let v: Vec<f32> = s
            .split(',')
            .map(|p| {
                p.trim()
                    .parse::<f32>()
                    .map_err(|_| format!("'{p}' is not a number"))
            })
            .collect::<Result<_, _>>()?;
        match v.as_slice() {
            &[fx, fy, cx, cy] if fx > 0.0 && fy > 0.0 && v.iter().all(|x| x.is_finite()) => {
                Ok(Intrinsics { fx, fy, cx, cy })
            }
            _ => Err(format!(
                "intrinsics are fx,fy,cx,cy in pixels with positive focal lengths, not '{s}'"
            )),
        }
    }

    /// The camera-frame point (metres: x right, y down, z forward) of pixel
    /// (u, v) at depth `d` metres.
    pub fn unproject(&self, u: f32, v: f32, d: f32) -> [f32; 3] {
        [(u - self.cx) * d / self.fx, (v - self.cy) * d / self.fy, d]
    }
}

impl Shapes {
    /// The trajectory's points in metres in the camera frame (shapes in the
    /// original image's pixels, with depths); empty without depths.
    pub fn points_3d(&self, k: &Intrinsics) -> Vec<[f32; 3]> {
        if self.depths.len() != self.trajectory.len() {
            return Vec::new();
        }
        self.trajectory
            .iter()
            .zip(&self.depths)
            .map(|(p, &d)| k.unproject(p[0], p[1], d))
            .collect()
    }

    /// The points in metres in the camera frame (shapes in the original
    /// image's pixels, with point depths); empty without them.
    pub fn point_positions_3d(&self, k: &Intrinsics) -> Vec<[f32; 3]> {
        if self.point_depths.len() != self.points.len() {
            return Vec::new();
        }
        self.points
            .iter()
            .zip(&self.point_depths)
            .map(|(p, &d)| k.unproject(p[0], p[1], d))
            .collect()
    }

    /// The shapes as JSON (original image pixels; depths and camera-frame
    /// points where there are depths and intrinsics: `points_3d` for the
    /// trajectory, `point_positions_3d` for the points).
    pub fn to_json(&self, k: Option<&Intrinsics>) -> serde_json::Value {
        let mut v = serde_json::json!({
            "points": self.points,
            "boxes": self.boxes,
            "trajectory": self.trajectory,
            "depths": self.depths,
            "point_depths": self.point_depths,
        });
        if let Some(k) = k.filter(|_| !self.depths.is_empty() || !self.point_depths.is_empty()) {
            v["intrinsics"] = serde_json::json!(k);
            v["points_3d"] = serde_json::json!(self.points_3d(k));
            v["point_positions_3d"] = serde_json::json!(self.point_positions_3d(k));
        }
        v
    }
}

/// Groups of numbers inside the innermost brackets (`(…)`, `[…]`), in
/// order: `[(1, 2), (3, 4)]` gives `[1, 2]`, `[3, 4]`; a bracket holding
/// brackets contributes only its inner groups. Text that is not a number
/// inside a group ends it being a coordinate group (`[a, 1]` is skipped).
fn number_groups(s: &str) -> Vec<Vec<f32>> {
    let mut groups = Vec::new();
    let mut stack: Vec<(usize, bool)> = Vec::new(); // (start, has inner group)
    for (i, c) in s.char_indices() {
        match c {
            '(' | '[' => {
                if let Some(top) = stack.last_mut() {
                    top.1 = true;
                }
                stack.push((i + 1, false));
            }
            ')' | ']' => {
                if let Some((start, inner)) = stack.pop() {
                    if !inner {
                        if let Some(g) = parse_numbers(&s[start..i]) {
                            groups.push(g);
                        }
                    }
                }
            }
            _ => {}
        }
    }
    groups
}

fn parse_numbers(s: &str) -> Option<Vec<f32>> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    s.split(',')
        .map(|p| {
            let p = p.trim().trim_matches(|c| c == '"' || c == '\'');
            p.parse::<f32>().ok().filter(|v| v.is_finite())
        })
        .collect()
}

/// Shapes from an answer of `family`'s model: 2.0's as [`parse_shapes`]
/// reads them; 2.5's in thousandths of the image, its trajectories as
/// (x, y, depth) triples (pairs accepted, without depth) — RoboBrain 2.5's
/// own code reads `x, y, d` with a decimal depth — and, for pointing and
/// general answers, (x, y, depth) triples as points with their depths (3-D
/// spatial referring).
pub fn parse_shapes_for(family: Family, task: Task, answer: &str) -> Shapes {
    if family == Family::RoboBrain2 {
        return parse_shapes(task, answer);
    }
    let mut out = if task == Task::Trajectory {
        let groups = number_groups(answer);
        let triples: Vec<&Vec<f32>> = groups.iter().filter(|g| g.len() == 3).collect();
        let mut s = Shapes::default();
        if triples.is_empty() {
            s.trajectory = groups
                .iter()
                .filter(|g| g.len() == 2)
                .map(|g| [g[0], g[1]])
                .collect();
        } else {
            s.trajectory = triples.iter().map(|g| [g[0], g[1]]).collect();
            s.depths = triples.iter().map(|g| g[2]).collect();
        }
        s
    } else {
        let mut s = parse_shapes(task, answer);
        if matches!(task, Task::Pointing | Task::General) {
            let triples: Vec<Vec<f32>> = number_groups(answer)
                .into_iter()
                .filter(|g| g.len() == 3)
                .collect();
            if !triples.is_empty() {
                s.points = triples.iter().map(|g| [g[0], g[1]]).collect();
                s.point_depths = triples.iter().map(|g| g[2]).collect();
            }
        }
        s
    };
    out.normalized = false;
    out.per_mille = true;
    out
}

/// Points, boxes or a trajectory from an answer, whatever form the model
/// chose: `[(x, y), …]`, `[[x, y], …]`, `[x1, y1, x2, y2]`, JSON such as
/// `{"bbox_2d": [x1, y1, x2, y2]}`, several boxes, stray text around them.
/// Pointing reads pairs as points; trajectory reads pairs as one path;
/// affordance and grounding read quadruples as boxes (and pairs as points
/// when no box is there). General answers are read for anything.
pub fn parse_shapes(task: Task, answer: &str) -> Shapes {
    let groups = number_groups(answer);
    let pairs: Vec<[f32; 2]> = groups
        .iter()
        .filter(|g| g.len() == 2)
        .map(|g| [g[0], g[1]])
        .collect();
    let quads: Vec<[f32; 4]> = groups
        .iter()
        .filter(|g| g.len() == 4)
        .map(|g| [g[0], g[1], g[2], g[3]])
        .collect();
    let mut out = Shapes::default();
    match task {
        Task::Pointing => out.points = pairs,
        Task::Trajectory => out.trajectory = pairs,
        Task::Affordance | Task::Grounding => {
            if quads.is_empty() {
                out.points = pairs;
            } else {
                out.boxes = quads;
            }
        }
        Task::General => {
            out.boxes = quads;
            out.points = pairs;
        }
        // A score, not coordinates.
        Task::Progress => {}
    }
    let all: Vec<f32> = out
        .points
        .iter()
        .chain(&out.trajectory)
        .flat_map(|p| p.iter().copied())
        .chain(out.boxes.iter().flat_map(|b| b.iter().copied()))
        .collect();
    out.normalized = !all.is_empty()
        && all.iter().all(|v| (0.0..=1.0).contains(v))
        && all.iter().any(|v| v.fract() != 0.0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_match_robobrain() {
        assert_eq!(
            Task::Grounding.prompt("the person wearing a red hat"),
            "Please provide the bounding box coordinate of the region this sentence describes: the person wearing a red hat."
        );
        assert!(Task::Affordance
            .prompt("hold the cup")
            .starts_with("You are a robot using the joint control. The task is \"hold the cup\"."));
        assert_eq!("Pointing".parse::<Task>().unwrap(), Task::Pointing);
        assert!("dance".parse::<Task>().is_err());
    }

    #[test]
    fn thinking_by_model() {
        // The 3B's and 7B's text models (3.1B and 7.1B parameters).
        assert_eq!(
            thinking_for(["RoboBrain2.0-3B"].into_iter(), 3_090_000_000),
            Some(false)
        );
        assert_eq!(
            thinking_for(["RoboBrain2.0 (synthetic)"].into_iter(), 7_070_000_000),
            Some(true)
        );
        // A renamed file of a 3B does not think.
        assert_eq!(
            thinking_for(["robobrain-7b-final"].into_iter(), 3_090_000_000),
            Some(false)
        );
        assert_eq!(
            thinking_for(["Qwen2.5-VL-7B-Instruct"].into_iter(), 7_070_000_000),
            None
        );
        assert_eq!(
            thinking_suffix(Some(true), false),
            "<think></think><answer>"
        );
        assert_eq!(thinking_suffix(Some(false), true), "");
    }

    #[test]
    fn documented_answers() {
        let s = parse_shapes(Task::Grounding, "[0, 193, 226, 640]");
        assert_eq!(s.boxes, vec![[0.0, 193.0, 226.0, 640.0]]);
        assert!(!s.normalized);
        let s = parse_shapes(
            Task::Trajectory,
            "[(137, 116), (169, 94), (208, 84), (228, 80)]",
        );
        assert_eq!(s.trajectory.len(), 4);
        assert_eq!(s.trajectory[3], [228.0, 80.0]);
        let s = parse_shapes(Task::Pointing, "[(376, 309), (332, 357), (384, 335)]");
        assert_eq!(
            s.points,
            vec![[376.0, 309.0], [332.0, 357.0], [384.0, 335.0]]
        );
        let s = parse_shapes(Task::Trajectory, "[[0.781, 0.305], [0.688, 0.344]]");
        assert!(s.normalized);
        assert_eq!(s.trajectory[0], [0.781, 0.305]);
        let s = parse_shapes(Task::Affordance, "[577, 224, 638, 310]");
        assert_eq!(s.boxes, vec![[577.0, 224.0, 638.0, 310.0]]);
    }

    #[test]
    fn malformed_answers() {
        // Missing closing bracket, stray words, JSON, negative garbage.
        let s = parse_shapes(Task::Pointing, "Points: [(10, 20), (30,40) and (50 , 60");
        assert_eq!(s.points, vec![[10.0, 20.0], [30.0, 40.0]]);
        let s = parse_shapes(
            Task::Grounding,
            "```json\n[{\"bbox_2d\": [12, 30, 80, 95], \"label\": \"cup\"}]\n```",
        );
        assert_eq!(s.boxes, vec![[12.0, 30.0, 80.0, 95.0]]);
        let s = parse_shapes(Task::Grounding, "I cannot see [it, there]");
        assert!(s.is_empty());
        let s = parse_shapes(Task::Trajectory, "[[1, 2], [3], [4, 5, 6], [7, 8]]");
        assert_eq!(s.trajectory, vec![[1.0, 2.0], [7.0, 8.0]]);
        let s = parse_shapes(Task::Grounding, "box (5, 6, 7, 8)");
        assert_eq!(s.boxes, vec![[5.0, 6.0, 7.0, 8.0]]);
    }

    #[test]
    fn think_tags_tolerated() {
        let s = split_thinking("<think>look</think><answer>[1, 2]</answer>", false);
        assert_eq!((s.thinking.as_str(), s.answer.as_str()), ("look", "[1, 2]"));
        // The prompt opened <think>: the reply starts inside it.
        let s = split_thinking("hmm</think>\n<answer>[(1, 2)]", true);
        assert_eq!(
            (s.thinking.as_str(), s.answer.as_str()),
            ("hmm", "[(1, 2)]")
        );
        // Never closed: all thinking, no answer.
        let s = split_thinking("still thinking about it", true);
        assert_eq!(s.answer, "");
        // Nested and repeated tags: the last </think> wins.
        let s = split_thinking("<think>a<think>b</think>c</think> [3, 4]", false);
        assert_eq!((s.thinking.as_str(), s.answer.as_str()), ("abc", "[3, 4]"));
        // No tags at all on a 3B model.
        let s = split_thinking("[0, 1, 2, 3]", false);
        assert_eq!(s.answer, "[0, 1, 2, 3]");
        // An answer tag without a think end.
        let s = split_thinking("<answer>[5, 6]</answer>", false);
        assert_eq!(s.answer, "[5, 6]");
    }

    /// 2.5's prompts, worded as RoboBrain 2.5's `inference.py` words them,
    /// and its answers: thousandths of the image, (x, y, d) waypoints.
    #[test]
    fn robobrain_2_5_prompts_and_answers() {
        let f = Family::RoboBrain25;
        assert_eq!(
            Task::Pointing.prompt_for(f, "the affordance area for holding the cup"),
            "the affordance area for holding the cup. Please provide its 2D coordinates. Your answer should be formatted as a tuple, i.e. [(x, y)], where the tuple contains the x and y coordinates of a point satisfying the conditions above."
        );
        assert_eq!(
            Task::Trajectory.prompt_for(f, "reach for the banana on the plate"),
            "Please predict 3D end-effector-centric waypoints to complete the task successfully. The task is \"reach for the banana on the plate\". Your answer should be formatted as a list of tuples, i.e., [(x1, y1, d1), (x2, y2, d2), ...], where each tuple contains the x and y coordinates and the depth of the point."
        );
        assert_eq!(
            Task::Grounding.prompt_for(f, "the person wearing a red hat"),
            "Please provide the bounding box coordinate of the region this sentence describes: the person wearing a red hat."
        );
        assert_eq!(
            Task::General.prompt_for(f, "What is shown?"),
            "What is shown?"
        );
        // 2.0's wording is unchanged.
        assert_eq!(
            Task::Pointing.prompt_for(Family::RoboBrain2, "x"),
            Task::Pointing.prompt("x")
        );
        assert_eq!(f.tasks().len(), 5);
        assert!(!f.tasks().contains(&Task::Affordance));
        assert_eq!(Family::of_arch("qwen3vl"), f);
        assert_eq!(Family::of_model_name("BAAI/RoboBrain2.5-8B-NV"), f);
        assert_eq!(Family::of_model_name("robobrain-2.5-8b"), f);
        assert_eq!(
            Family::of_model_name("BAAI/RoboBrain2.0-7B"),
            Family::RoboBrain2
        );
        assert_eq!(Family::of_arch("qwen2vl"), Family::RoboBrain2);

        // A 3-D trace as the model writes it.
        let s = parse_shapes_for(
            f,
            Task::Trajectory,
            "[(512, 430, 0.652), (540, 388, 0.601), (566, 350, 0.58)]",
        );
        assert_eq!(
            s.trajectory,
            vec![[512.0, 430.0], [540.0, 388.0], [566.0, 350.0]]
        );
        assert_eq!(s.depths, vec![0.652, 0.601, 0.58]);
        assert!(s.per_mille);
        let m = s.to_image((1, 1), (2000, 1000));
        assert_eq!(m.trajectory[0], [1024.0, 430.0]);
        assert_eq!(m.depths, s.depths);
        // Stray text, a pair among triples, no closing bracket.
        let s = parse_shapes_for(
            f,
            Task::Trajectory,
            "<answer>Waypoints: [(100, 200, 0.5), (7, 8), (300, 400, 0.45)",
        );
        assert_eq!(s.trajectory, vec![[100.0, 200.0], [300.0, 400.0]]);
        assert_eq!(s.depths, vec![0.5, 0.45]);
        // Pairs only: a trace without depth.
        let s = parse_shapes_for(f, Task::Trajectory, "[(1, 2), (3, 4)]");
        assert_eq!(s.trajectory.len(), 2);
        assert!(s.depths.is_empty());
        // Points and boxes in thousandths.
        let s = parse_shapes_for(f, Task::Pointing, "[(250, 500)]");
        assert_eq!(s.to_image((1, 1), (400, 200)).points, vec![[100.0, 100.0]]);
        let s = parse_shapes_for(f, Task::Grounding, "[100, 200, 500, 600]");
        assert_eq!(
            s.to_image((1, 1), (1000, 500)).boxes,
            vec![[100.0, 100.0, 500.0, 300.0]]
        );
    }

    #[test]
    fn intrinsics_give_metric_points() {
        let k = Intrinsics::parse("500, 400, 320, 240").unwrap();
        assert_eq!(k.unproject(320.0, 240.0, 2.0), [0.0, 0.0, 2.0]);
        assert_eq!(k.unproject(820.0, 40.0, 1.0), [1.0, -0.5, 1.0]);
        assert!(Intrinsics::parse("0, 1, 2, 3").is_err());
        assert!(Intrinsics::parse("1, 2, 3").is_err());
        assert!(Intrinsics::parse("1, x, 3, 4").is_err());
        let s = Shapes {
            trajectory: vec![[320.0, 240.0], [820.0, 240.0]],
            depths: vec![1.0, 0.5],
            ..Default::default()
        };
        assert_eq!(s.points_3d(&k), vec![[0.0, 0.0, 1.0], [0.5, 0.0, 0.5]]);
        let j = s.to_json(Some(&k));
        assert_eq!(j["points_3d"][1][0], 0.5);
        assert_eq!(j["depths"][0], 1.0);
        assert!(s.to_json(None).get("points_3d").is_none());
    }

    #[test]
    fn mapping_to_the_original_image() {
        let s = parse_shapes(Task::Pointing, "[(112, 84)]");
        let m = s.to_image((224, 168), (448, 336));
        assert_eq!(m.points, vec![[224.0, 168.0]]);
        let s = parse_shapes(Task::Pointing, "[(0.5, 0.25)]");
        let m = s.to_image((224, 168), (1000, 800));
        assert_eq!(m.points, vec![[500.0, 200.0]]);
        // Swapped corners and points off the image are tidied.
        let s = parse_shapes(Task::Grounding, "[300, 50, 10, 400]");
        let m = s.to_image((224, 168), (224, 168));
        assert_eq!(m.boxes, vec![[10.0, 50.0, 224.0, 168.0]]);
    }

    #[test]
    fn progress_steps_follow_robo_dopamine_forward_mode() {
        let frames: Vec<std::path::PathBuf> = ["f0.png", "f1.png", "f2.png"]
            .iter()
            .map(Into::into)
            .collect();
        let steps = progress_steps(&frames, None, ProgressMode::Forward);
        assert_eq!(steps.len(), 2);
        assert_eq!(steps[1].frame, 2);
        let names = |s: &ProgressStep| -> Vec<String> {
            s.images.iter().map(|p| p.display().to_string()).collect()
        };
        // Reference start and end (the last frame without a goal), then
        // the first frame and the judged one for all three views.
        assert_eq!(
            names(&steps[0]),
            ["f0.png", "f2.png", "f0.png", "f0.png", "f0.png", "f1.png", "f1.png", "f1.png"]
        );
        // Incremental: the frame before is "before".
        let inc = progress_steps(&frames, None, ProgressMode::Incremental);
        assert_eq!(
            names(&inc[1]),
            ["f0.png", "f2.png", "f1.png", "f1.png", "f1.png", "f2.png", "f2.png", "f2.png"]
        );
        let goal = std::path::Path::new("goal.png");
        assert_eq!(
            progress_steps(&frames, Some(goal), ProgressMode::Forward)[0].images[1],
            goal
        );
        assert!(progress_steps(&frames[..1], None, ProgressMode::Incremental).is_empty());
        // Robo-Dopamine's arithmetic.
        let inc = ProgressMode::Incremental;
        assert!((inc.next(0.0, Some(0.4)) - 0.4).abs() < 1e-6);
        assert!((inc.next(0.4, Some(0.5)) - 0.7).abs() < 1e-6);
        assert!((inc.next(0.4, Some(-0.1)) - 0.36).abs() < 1e-6);
        assert_eq!(inc.next(0.4, None), 0.4);
        assert_eq!(ProgressMode::Forward.next(0.4, Some(0.2)), 0.2);
        assert_eq!("Forward".parse::<ProgressMode>(), Ok(ProgressMode::Forward));
        assert!("backward".parse::<ProgressMode>().is_err());

        let m = progress_message("organize the table", &steps[0]);
        let parts = m.content.as_array().unwrap();
        assert_eq!(parts.len(), 17);
        let kinds: String = parts
            .iter()
            .map(|p| if p["type"] == "image" { 'i' } else { 't' })
            .collect();
        assert_eq!(kinds, format!("t{}", "it".repeat(8)));
        let text: String = parts.iter().filter_map(|p| p["text"].as_str()).collect();
        assert!(text.starts_with("\nYou are a rigorous, impartial vision evaluator"));
        assert!(text.contains("<Task>\n`organize the table`\n"));
        assert!(text.contains("1) Task Alignment: Evidence directly tied to `organize the table`."));
        assert!(!text.contains("{task}") && !text.contains("<image>"));
        assert!(
            text.ends_with("<score>+NN%</score>  or  <score>-NN%</score>  or  <score>0%</score>\n")
        );
        assert_eq!(parts[1]["path"], "f0.png");
        assert_eq!(parts[15]["path"], "f1.png");
        assert!(Task::Progress.check_images(1).is_err());
        assert!(Task::Progress.check_images(3).is_ok());
        assert!(Task::Pointing.check_images(2).is_err());
        assert!(Family::RoboBrain25.tasks().contains(&Task::Progress));
        assert!(!Family::RoboBrain2.tasks().contains(&Task::Progress));
    }

    #[test]
    fn progress_scores_are_read_tolerantly() {
        for (answer, want) in [
            ("<score>+35%</score>", Some(0.35)),
            ("<score>-20%</score>", Some(-0.2)),
            ("<score>0%</score>", Some(0.0)),
            ("<score>+250%</score>", Some(1.0)),
            ("first <score>10%</score> then <score>+40%", Some(0.4)),
            ("<score> 12.5 </score>", Some(0.125)),
            ("The AFTER set is better: +60%", Some(0.6)),
            ("no idea", None),
            ("<score>lots</score>", None),
        ] {
            let got = parse_score(answer);
            match (got, want) {
                (Some(g), Some(w)) => assert!((g - w).abs() < 1e-6, "{answer}: {g}"),
                (g, w) => assert_eq!(g, w, "{answer}"),
            }
        }
    }

    #[test]
    fn frames_are_sampled_evenly_with_both_ends() {
        assert_eq!(sample_frames(5, 12), vec![0, 1, 2, 3, 4]);
        assert_eq!(sample_frames(100, 4), vec![0, 33, 66, 99]);
        let s = sample_frames(1000, 12);
        assert_eq!((s.len(), s[0], s[11]), (12, 0, 999));
        assert_eq!(sample_frames(10, 0), vec![0, 9]);
    }

    #[test]
    fn robobrain_2_5_points_with_depth() {
        let f = Family::RoboBrain25;
        let s = parse_shapes_for(f, Task::Pointing, "[(500, 250, 0.82), (100, 900, 1.5)]");
        assert_eq!(s.points, vec![[500.0, 250.0], [100.0, 900.0]]);
        assert_eq!(s.point_depths, vec![0.82, 1.5]);
        let m = s.to_image((0, 0), (200, 100));
        assert_eq!(m.points, vec![[100.0, 25.0], [20.0, 90.0]]);
        assert_eq!(m.point_depths, s.point_depths);
        let k = Intrinsics {
            fx: 100.0,
            fy: 100.0,
            cx: 100.0,
            cy: 50.0,
        };
        let j = m.to_json(Some(&k));
        assert_eq!(j["point_depths"][1], 1.5);
        let p = m.point_positions_3d(&k);
        assert!(
            (p[1][0] - (20.0 - 100.0) * 1.5 / 100.0).abs() < 1e-6,
            "{p:?}"
        );
        assert_eq!(j["point_positions_3d"].as_array().unwrap().len(), 2);
        // 2-D answers keep no depths; 2.0 reads pairs only.
        let flat = parse_shapes_for(f, Task::Pointing, "[(500, 250)]");
        assert!(flat.point_depths.is_empty() && flat.points.len() == 1);
        let general = parse_shapes_for(f, Task::General, "The cup is at (400, 300, 0.9).");
        assert_eq!(general.point_depths, vec![0.9]);
    }
}
