#!/usr/bin/env python3
"""Writes the caption-metric fixtures and golden values under tests/fixtures/eval/.

Reference: pycocoevalcap (BLEU-1..4, ROUGE-L, CIDEr-D) with its PTBTokenizer, which runs the Stanford
CoreNLP 3.4.1 jar through `java`. Java is required: without it there is no reference tokenization to
compare against, and the script stops. Run from the repository root:
    .venv/bin/python scripts/make_eval_golden.py
"""
import json
import os
import shutil
import sys

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "eval")

# Strings that exercise the tokenizer: clitics, abbreviations, numbers, brackets, quotes, hyphens, Unicode.
PTB_CASES = [
    "A man riding a wave on top of a surfboard.",
    "A man's dog, isn't it?",
    "Don't stop -- won't, can't!",
    "A t-shirt (red) and U.S. flag.",
    'He said "hello" \'there\'.',
    "3.5 pounds at 10:30 p.m. e.g. cats...",
    "cannot gonna gimme wanna gotta lemme",
    "A  double  space & ampersand [x] {y}",
    "$5.00 50% #1 @home a/b",
    "Mr. Smith's car's door",
    "café naïve ÉCOLE Ångström",
    "rock'n'roll o'clock y'all 'tis 'twas",
    "dogs' toys",
    "1,000 people 1,000,000",
    "Hello!!! ?!",
    "ph.d. u.k.'s",
    "colour grey theatre",
    "\u201cquoted\u201d \u2018single\u2019 it\u2019s",
    "em\u2014dash en\u2013dash \u2026 ellipsis",
    "",
    "...",
    "a dog on st. street",
    "in the u.s.",
    "etc. and so on etc.",
    "she'd we'll they're I'm you've",
    "CAN'T DON'T",
    "9/11 1/2 \u00bd",
    "well--known x-ray e-mail",
    "it's 5 o'clock ain't",
    "A.M. a.m",
    "TV's the 90's '90s",
    "&amp; &lt;",
    "www.google.com foo@bar.com http://x.com/a",
    "C++ C# F#",
    "no. 5 Fig. 1 the answer is no.",
    "b&w AT&T",
    "  leading and trailing  ",
    "tab\there",
    "dog,cat a.b 3,dogs a dog.the cat",
    "Two dogs;one cat:",
    "(hello) -hello- 's",
    "it's. dogs' can't. I'M",
    "a 3-year-old boy in the 1990s",
    "Mt. Fuji vs. i.e., this",
    "a b.c. d U.S.A. Ph.D 24/7 10.5% -5 +5 5-10",
    "O'Neil d'Artagnan 'em cuz wasn't doesn't y'know ma'am li'l",
    "good-bye! ...and and... a,b,c x=y a*b a_b a~b",
    "wow!! what?! there are 5. grade a. J. Smith vitamin C.",
    "at 2 p.m. a:b dog's. x' 'cause cat- 3/4. 9:00. the end...",
    "a --b a-- b two men . a dog ,a cat (a dog). \"a dog.\"",
    "a person's hand. it is 5.5. Hi. smiles: foo.bar. we'd've Alice's.",
    "N.Y.C. people.The 1. 1.5.6 ok.. no-one x--y #hashtag 5: 5,000. oz. lbs. ft. approx. 1st.",
    "A man at St. Mark's Church on Jan. 5 with Dr. Who",
    "The U.S. The end. Inc. Corp. Ltd. A. B",
]

# The lexer keeps the period of an abbreviation depending on what follows (end of line, a lower-case word,
# a number, a capitalized word); every entry of the C++ tables is checked in each context.
ABBREVIATIONS = (
    "adm al ala apr ariz art assn aug ave bancorp bhd blvd brig bros ca calif capt cf cmdr co col colo comdr "
    "conn corp cos dec dept det dr drs ed.d esq est etc ext feb fig figs fla fri ft ga gen gov govs hon inc ind "
    "intl jan jr jul jun kan kans ky lieut lt ltd maj mar md messrs mich minn mo mon mont mr mrs ms mt neb nev "
    "no nos nov oct okla op penn pfc ph.d plc pp pres prof profs pty ptys pvt rd rep reps rev sen sens sep sept "
    "sgt spc sq sr st ste supt supts sys tel tenn thu tue univ va vs vt wed wis wyo "
    "u.s a.m e.g i.e oz lbs approx min max hr yr sec kg km in ex ibid viz").split()
PTB_CASES += [f"A {w}. {nxt}" for w in ABBREVIATIONS for nxt in ("", "b", "5", "The")]
# A single letter with a period splits before a sentence-starting word only.
PTB_CASES += [f"x b. {w} x" for w in ("The A An He She It They We I There In On This That Hello Smith Man Two "
                                      "What But And If When Its His Her Our You Some").split()]

# Random sentences tokenized as one batch: "X." at the end of a line splits or not depending on how the
# next line starts (a sentence starter such as "A dog" or "The cat" ends the sentence).
def batch_sentences(n=300, seed=0):
    import random
    rng = random.Random(seed)
    words = ("a man woman dog cat riding sitting on top of the wave surfboard table with red blue two people "
             "standing next to street bus car's isn't (small) large, white. i b x no. 5").split()
    out = []
    for _ in range(n):
        s = " ".join(rng.choice(words) for _ in range(rng.randint(2, 9)))
        out.append(s[0].upper() + s[1:] + rng.choice([".", ".", "", " ."]))
    return out


# A small caption set in the COCO annotation / results formats. Refs are written like COCO captions
# (capitals, final periods, clitics, numbers); hypotheses like model outputs.
IMAGES = [
    (101, ["A man riding a wave on top of a surfboard.", "A surfer rides a large wave in the ocean.",
           "a person on a surf board riding a wave", "A surfer in a black wetsuit catching a wave.",
           "The surfer is riding the big wave."],
     "a man riding a wave on a surfboard"),
    (102, ["Two dogs playing with a frisbee in the park.", "Two dogs are running on the grass.",
           "A pair of dogs chase a red frisbee.", "two brown dogs in a grassy field", "Dogs play fetch outside."],
     "two dogs playing with a frisbee in a field."),
    (103, ["A kitchen with a stove, a sink and a refrigerator.", "A small kitchen with white cabinets.",
           "The kitchen has a stainless steel fridge.", "An empty kitchen in someone's home.",
           "A clean kitchen with appliances and a window."],
     "A kitchen with a stove and a refrigerator."),
    (104, ["A plate of food with broccoli and rice.", "A dinner plate with meat, rice, and vegetables.",
           "Broccoli, rice and chicken on a white plate.", "a meal that's served on a plate",
           "A healthy meal of chicken and broccoli."],
     "a plate of food with rice and broccoli"),
    (105, ["A red double-decker bus driving down the street.", "A double decker bus on a city street.",
           "A big red bus in London.", "The bus isn't full of passengers.", "A tour bus drives past buildings."],
     "a red double decker bus on a city street"),
    (106, ["A cat sitting on top of a laptop computer.", "A gray cat laying on a keyboard.",
           "The cat's sleeping on the laptop.", "a kitten rests on an open laptop",
           "A cat is lying on a computer (a MacBook)."],
     "a cat laying on top of a laptop computer"),
    (107, ["A baseball player swinging a bat at a ball.", "A batter swings at the pitch.",
           "The baseball player is about to hit the ball.", "A man in a uniform swinging a bat.",
           "A player at home plate during a game."],
     "A baseball player swinging a bat at a ball."),
    (108, ["A giraffe standing next to a tree.", "A tall giraffe eating leaves from a tree.",
           "One giraffe in a zoo enclosure.", "A giraffe reaching up to eat.", "The giraffe's neck is very long."],
     "a giraffe standing in a field next to a tree"),
    (109, ["A woman holding an umbrella in the rain.", "A lady walks with a black umbrella.",
           "A person with an umbrella on a rainy day.", "Woman under an umbrella on a wet street.",
           "Someone is holding an umbrella."],
     "a woman walking down a street holding an umbrella"),
    (110, ["Two people skiing down a snowy hill.", "Skiers on a mountain slope.",
           "A couple of people ski down the mountain.", "Two skiers in the snow.",
           "People are skiing on a snow-covered slope."],
     "a group of people skiing down a snow covered slope"),
    (111, ["A train traveling down tracks next to a forest.", "A long train on the railroad tracks.",
           "A passenger train passes through the countryside.", "The train is moving along the tracks.",
           "A yellow and blue train on a track."],
     "a train on the tracks"),
    (112, ["A bathroom with a toilet and a sink.", "A small white bathroom.", "A toilet next to a bathroom sink.",
           "The bathroom has tiled walls and a mirror.", "A clean bathroom with a shower."],
     "a bathroom with a toilet, sink and mirror."),
    (113, ["A pizza with cheese and pepperoni on a table.", "A large pizza sitting on a wooden table.",
           "A pepperoni pizza cut into 8 slices.", "Someone's about to eat a whole pizza.",
           "A hot pizza fresh out of the oven."],
     "a pizza sitting on top of a table"),
    (114, ["A clock tower in the middle of a city.", "A tall clock tower at 3 o'clock.",
           "The clock on the tower reads 10:30.", "A big clock on a brick building.", "A tower with a clock face."],
     "a large clock tower with a clock on it"),
    (115, ["A boy flying a kite on the beach.", "A child flies a kite near the ocean.",
           "A kid with a colorful kite at the shore.", "A young boy's kite in the sky.", "Kite flying on a windy day."],
     "a young boy flying a kite on a beach"),
    (116, ["Elephants walking through a grassy field.", "A herd of elephants in the wild.",
           "Three elephants, one small, walk together.", "An elephant family crossing a plain.",
           "Large elephants roam the savanna."],
     "a herd of elephants walking across a field"),
    (117, ["A man in a suit and tie.", "A businessman wearing a blue tie.", "A man dressed up for work.",
           "A guy in a jacket and tie smiling.", "The man's tie is striped."],
     "a man wearing a suit and tie"),
    (118, ["A bowl of fruit on a counter.", "Bananas, apples and oranges in a bowl.", "A fruit bowl on the table.",
           "Fresh fruit in a glass bowl.", "Some fruit that's sitting in a basket."],
     "a bowl of fruit sitting on a table"),
    (119, ["A stop sign on a street corner.", "A red stop sign next to the road.",
           "A \"STOP\" sign at an intersection.", "The stop sign is bent.", "Stop sign near a building."],
     "a red stop sign sitting on the side of a road"),
    (120, ["A horse grazing in a field.", "A brown horse eating grass.", "A horse in the pasture.",
           "One horse standing near a fence.", "The horse's mane is black."],
     "a horse"),
]


def ptb(sentences):
    """Tokenizes with pycocoevalcap's PTBTokenizer; returns the strings in input order."""
    data = {i: [{"caption": s}] for i, s in enumerate(sentences)}
    tok = PTBTokenizer().tokenize(data)
    return [tok[i][0] for i in range(len(sentences))]


def caption_scores(gts, res):
    bleu, bleu_img = Bleu(4).compute_score(gts, res, verbose=0)
    rouge, rouge_img = Rouge().compute_score(gts, res)
    cider, cider_img = Cider().compute_score(gts, res)
    ids = list(gts.keys())
    return {
        "Bleu_1": bleu[0], "Bleu_2": bleu[1], "Bleu_3": bleu[2], "Bleu_4": bleu[3],
        "ROUGE_L": float(rouge), "CIDEr": float(cider),
        "per_image": [{"image_id": i, "Bleu_4": float(bleu_img[3][k]), "ROUGE_L": float(rouge_img[k]),
                       "CIDEr": float(cider_img[k])} for k, i in enumerate(ids)],
    }


# Hand-made VQA fixture (official annotation format); the expected accuracies are worked out by hand in
# tests/test_eval_vqa.cpp: vqa 80.0, vqa_official 55.0, textvqa 80.0.
def vqa_answers(*pairs):
    out = []
    for text, n in pairs:
        out += [text] * n
    return [{"answer": a, "answer_confidence": "yes", "answer_id": k + 1} for k, a in enumerate(out)]


VQA_ANNOTATIONS = {
    "info": {"description": "owl2 VQA fixture"}, "data_type": "mscoco", "data_subtype": "val2014",
    "annotations": [
        {"question_id": 1, "image_id": 11, "question_type": "is the", "answer_type": "yes/no",
         "multiple_choice_answer": "yes", "answers": vqa_answers(("yes", 10))},
        {"question_id": 2, "image_id": 12, "question_type": "how many", "answer_type": "number",
         "multiple_choice_answer": "3", "answers": vqa_answers(("2", 3), ("3", 7))},
        {"question_id": 3, "image_id": 13, "question_type": "what is", "answer_type": "other",
         "multiple_choice_answer": "dog", "answers": vqa_answers(("dog", 5), ("the dog", 5))},
        {"question_id": 4, "image_id": 14, "question_type": "what color", "answer_type": "other",
         "multiple_choice_answer": "blue", "answers": vqa_answers(("red", 1), ("blue", 9))},
    ]}
VQA_RESULTS = [{"question_id": 1, "answer": "Yes"}, {"question_id": 2, "answer": "two"},
               {"question_id": 3, "answer": "the dog"}, {"question_id": 4, "answer": "Red."}]


def write_bench_fixtures():
    """Small hand-made benchmark files in their public formats; expected scores are in
    tests/test_eval_bench_files.cpp, worked out by hand."""
    d = os.path.join(OUT, "bench")
    os.makedirs(os.path.join(d, "mme"), exist_ok=True)
    labels = ["yes", "yes", "yes", "no", "no", "no"]
    with open(os.path.join(d, "pope_questions.jsonl"), "w") as f:
        for i, lab in enumerate(labels):
            f.write(json.dumps({"question_id": i + 1, "image": f"COCO_val2014_{i:012d}.jpg",
                                "text": "Is there a dog in the image?", "label": lab}) + "\n")
    answers = ["Yes", "Yes, there is.", "No", "Yes", "There is no cat.", "not at all"]
    with open(os.path.join(d, "pope_answers.jsonl"), "w") as f:
        for i in reversed(range(len(answers))):  # order does not matter, ids do
            f.write(json.dumps({"question_id": i + 1, "prompt": "...", "text": answers[i]}) + "\n")
    mme = {
        "existence": [("1.jpg", "Is there a dog? Please answer yes or no.", "Yes", "Yes"),
                      ("1.jpg", "Is there a cat? Please answer yes or no.", "No", "No"),
                      ("2.jpg", "Is there a car? Please answer yes or no.", "Yes", "yes, there is"),
                      ("2.jpg", "Is there a bus? Please answer yes or no.", "No", "Yes")],
        "code_reasoning": [("4.png", "Does it print 3? Please answer yes or no.", "Yes", "Yes"),
                           ("4.png", "Does it print 4? Please answer yes or no.", "No", "No")],
    }
    for task, rows in mme.items():
        with open(os.path.join(d, "mme", task + ".txt"), "w", newline="") as f:
            for k, r in enumerate(rows):
                f.write("\t".join(r) + ("\r\n" if k == 0 else "\n"))
    header = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "l2-category", "split"]
    rows = [
        [0, "What animal is it?", "", "cat", "dog", "bird", "", "A", "ocr", "perception", "dev"],
        [1000000, "What animal is it?", "", "dog", "bird", "cat", "", "C", "ocr", "perception", "dev"],
        [2000000, "What animal is it?", "", "bird", "cat", "dog", "", "B", "ocr", "perception", "dev"],
        [1, 'Which "color"\tis it?', "a hint", "red", "blue", "", "", "B", "ocr", "perception", "dev"],
        [1000001, 'Which "color"\tis it?', "a hint", "blue", "red", "", "", "A", "ocr", "perception", "dev"],
        [2, "Is it raining?", "", "yes", "no", "", "", "A", "logic", "reasoning", "dev"],
    ]

    def cell(v):
        v = str(v)
        return '"' + v.replace('"', '""') + '"' if any(c in v for c in '"\t\n') else v
    with open(os.path.join(d, "mmbench.tsv"), "w") as f:
        f.write("\t".join(header) + "\n")
        for r in rows:
            f.write("\t".join(cell(v) for v in r) + "\n")
    preds = {0: "A", 1000000: "C.", 2000000: "(B) cat", 1: "B", 1000001: "I am not sure", 2: "B"}
    with open(os.path.join(d, "mmbench_preds.jsonl"), "w") as f:
        for k, v in preds.items():
            f.write(json.dumps({"index": k, "prediction": v}) + "\n")
    problems = {
        "1": {"question": "q1", "choices": ["a", "b", "c"], "answer": 1, "image": "image.png", "split": "test"},
        "2": {"question": "q2", "choices": ["x", "y"], "answer": 0, "image": None, "split": "test"},
        "3": {"question": "q3", "choices": ["x", "y"], "answer": 1, "image": "image.png", "split": "test"},
        "4": {"question": "q4", "choices": ["p", "q"], "answer": 0, "image": "image.png", "split": "test"},
        "5": {"question": "q5", "choices": ["p", "q"], "answer": 0, "image": None, "split": "train"},
    }
    with open(os.path.join(d, "scienceqa_problems.json"), "w") as f:
        json.dump(problems, f, indent=1)
    with open(os.path.join(d, "scienceqa_preds.jsonl"), "w") as f:
        for pid, text in [("1", "B"), ("2", "The answer is A."), ("3", "A"), ("4", "C")]:
            f.write(json.dumps({"question_id": pid, "prompt": "...", "text": text}) + "\n")


    gqa = {
        "1": {"imageId": "n1", "question": "Is it sunny?", "answer": "yes", "isBalanced": True,
              "types": {"structural": "verify", "semantic": "global", "detailed": "weatherVerify"}},
        "2": {"imageId": "n2", "question": "What is it?", "answer": "table", "isBalanced": True,
              "types": {"structural": "query", "semantic": "obj", "detailed": "objQuery"}},
        "3": {"imageId": "n3", "question": "Which side?", "answer": "left", "isBalanced": True,
              "types": {"structural": "query", "semantic": "rel", "detailed": "positionQuery"}},
        "4": {"imageId": "n4", "question": "Is it red?", "answer": "no", "isBalanced": False,
              "types": {"structural": "verify", "semantic": "attr", "detailed": "colorVerify"}},
    }
    with open(os.path.join(d, "gqa_questions.json"), "w") as f:
        json.dump(gqa, f, indent=1)
    with open(os.path.join(d, "gqa_preds.json"), "w") as f:
        json.dump([{"questionId": "1", "prediction": "Yes."}, {"questionId": "2", "prediction": "The table"},
                   {"questionId": "3", "prediction": "left"}], f, indent=1)
    seed = {"question_type": {"Scene Understanding": 1, "Instance Identity": 2},
            "questions": [
                {"question_id": "101", "question": "q", "choice_a": "a", "choice_b": "b", "choice_c": "c",
                 "choice_d": "d", "answer": "A", "data_id": "1.jpg", "data_type": "image", "question_type_id": 1},
                {"question_id": "102", "question": "q", "choice_a": "a", "choice_b": "b", "choice_c": "c",
                 "choice_d": "d", "answer": "B", "data_id": "2.jpg", "data_type": "image", "question_type_id": 1},
                {"question_id": "103", "question": "q", "choice_a": "a", "choice_b": "b", "choice_c": "c",
                 "choice_d": "d", "answer": "C", "data_id": "3.jpg", "data_type": "image", "question_type_id": 2},
                {"question_id": "104", "question": "q", "choice_a": "a", "choice_b": "b", "choice_c": "c",
                 "choice_d": "d", "answer": "D", "data_id": "v.mp4", "data_type": "video", "question_type_id": 2},
            ]}
    with open(os.path.join(d, "seed.json"), "w") as f:
        json.dump(seed, f, indent=1)
    with open(os.path.join(d, "seed_preds.jsonl"), "w") as f:
        for qid, pred in [("101", "A"), ("102", "B."), ("103", "C")]:
            f.write(json.dumps({"question_id": qid, "prediction": pred}) + "\n")


def main():
    os.makedirs(OUT, exist_ok=True)
    write_bench_fixtures()
    with open(os.path.join(OUT, "vqa_annotations.json"), "w") as f:
        json.dump(VQA_ANNOTATIONS, f, indent=1)
    with open(os.path.join(OUT, "vqa_results.json"), "w") as f:
        json.dump(VQA_RESULTS, f, indent=1)
    if shutil.which("java") is None:
        sys.exit("java not found: PTBTokenizer needs it (apt-get install default-jre-headless)")

    cases = [{"raw": s, "tokenized": t} for s, t in zip(PTB_CASES, ptb(PTB_CASES))]
    batch = batch_sentences()
    with open(os.path.join(OUT, "ptb_golden.json"), "w") as f:
        json.dump({"generator": "scripts/make_eval_golden.py (pycocoevalcap PTBTokenizer, CoreNLP 3.4.1); "
                                "each list is one tokenizer batch, one caption per line",
                   "cases": cases, "batch": {"raw": batch, "tokenized": ptb(batch)}}, f, indent=1,
                  ensure_ascii=False)

    # COCO caption files (the public formats that `owl2 score` reads).
    refs = {"info": {"description": "owl2 caption fixture"},
            "images": [{"id": i, "file_name": f"{i}.jpg"} for i, _, _ in IMAGES],
            "annotations": [], "type": "captions"}
    for i, caps, _ in IMAGES:
        for c in caps:
            refs["annotations"].append({"image_id": i, "id": len(refs["annotations"]) + 1, "caption": c})
    preds = [{"image_id": i, "caption": h} for i, _, h in IMAGES]
    with open(os.path.join(OUT, "captions_refs.json"), "w") as f:
        json.dump(refs, f, indent=1)
    with open(os.path.join(OUT, "captions_preds.json"), "w") as f:
        json.dump(preds, f, indent=1)

    # Same path as COCOEvalCap.evaluate: tokenize refs and results separately, then score.
    gts_raw = {i: [{"caption": c} for c in caps] for i, caps, _ in IMAGES}
    res_raw = {i: [{"caption": h}] for i, _, h in IMAGES}
    gts = PTBTokenizer().tokenize(gts_raw)
    res = PTBTokenizer().tokenize(res_raw)
    golden = {"generator": "scripts/make_eval_golden.py (pycocoevalcap BLEU/ROUGE_L/CIDEr after PTBTokenizer)",
              "tokenized": [{"image_id": i, "refs": gts[i], "hyp": res[i][0]} for i, _, _ in IMAGES],
              "scores": caption_scores(gts, res)}

    # Edge cases on pre-tokenized text: a single image (CIDEr idf = 0), an empty hypothesis, ties in BLEU's
    # closest reference length, a hypothesis longer than every reference.
    edge_sets = {
        "single_image": ({1: ["a cat on a mat", "the cat sits on the mat"]}, {1: ["a cat on the mat"]}),
        "empty_and_ties": (
            {1: ["a b c d", "a b c d e f"], 2: ["x y z", "x y"], 3: ["p q r s t u v w", "p q"]},
            {1: ["a b c d e"], 2: [""], 3: ["p q r s t u v w x y z q r s"]}),
    }
    golden["edge"] = {}
    for name, (g, r) in edge_sets.items():
        golden["edge"][name] = {"refs": {str(k): v for k, v in g.items()},
                                "hyps": {str(k): v[0] for k, v in r.items()},
                                "scores": caption_scores(g, r)}
    with open(os.path.join(OUT, "captions_golden.json"), "w") as f:
        json.dump(golden, f, indent=1)
    print("wrote", OUT)


if __name__ == "__main__":
    main()
