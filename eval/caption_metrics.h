// Caption metrics of the coco-caption toolkit on PTB-tokenized text (eval_metrics.md §3.3-3.5):
// corpus BLEU-1..4 ("closest" reference length), CIDEr-D (sigma 6, clipping, x10) and ROUGE-L (beta 1.2).
#pragma once
#include <array>
#include <string>
#include <vector>

namespace owl2::eval {

// One entry per image: its tokenized hypothesis and its tokenized references (at least one).
struct CaptionSet {
  std::vector<std::string> hyps;
  std::vector<std::vector<std::string>> refs;
};

struct BleuScore {
  std::array<double, 4> corpus{};                 // BLEU-1..4 over the whole set (the reported numbers)
  std::vector<std::array<double, 4>> per_image;  // sentence-level BLEU, as the reference lists it
  long testlen = 0, reflen = 0;                   // summed hypothesis and closest-reference lengths
};

struct ScoreWithImages {
  double corpus = 0;  // mean over images
  std::vector<double> per_image;
};

// Throws std::invalid_argument if sizes differ or an image has no reference.
BleuScore bleu(const CaptionSet& set);
// CIDEr-D with document frequencies from the references of this set; idf = log(#images).
ScoreWithImages cider_d(const CaptionSet& set);
ScoreWithImages rouge_l(const CaptionSet& set);

}  // namespace owl2::eval
