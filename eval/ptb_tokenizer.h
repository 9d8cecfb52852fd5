// Caption tokenization compatible with the coco-caption pipeline: Stanford PTBTokenizer 3.4.1
// (-preserveLines -lowerCase) followed by the removal of 17 punctuation tokens (eval_metrics.md §3.2).
#pragma once
#include <string>
#include <vector>

namespace owl2::eval {

// Lower-cases ASCII and the Latin-1 / Latin Extended-A capitals of UTF-8 text (what captions contain);
// other code points pass through unchanged.
std::string lower_utf8(const std::string& text);

// The tokens PTBTokenizer prints for one line, lower-cased (brackets become -lrb- etc.). Line breaks
// inside `line` count as spaces. A reimplementation of the lexer rules that captions exercise; the
// known differences from the Java lexer are listed in docs/eval.md.
std::vector<std::string> ptb_tokens(const std::string& line);

// One caption as the coco-caption scorers see it: ptb_tokens minus the tokens
// '' ' `` ` -LRB- -RRB- -LCB- -RCB- . ? ! , : - -- ... ; joined by single spaces.
// (The bracket entries are upper-case, so the lower-cased -lrb- ... survive, as they do in the reference.)
std::string coco_tokenize(const std::string& caption);

// A batch as coco-caption tokenizes it: the captions are joined into one input, one per line, and the
// lexer's sentence-end test for "X." at the end of a line looks at the start of the next caption
// ("next a." keeps "a." before "large dog" and splits it before "A dog"). Order matters: pass refs image by
// image in file order, and hypotheses in image order, as COCOEvalCap does.
std::vector<std::string> coco_tokenize_batch(const std::vector<std::string>& captions);

}  // namespace owl2::eval
