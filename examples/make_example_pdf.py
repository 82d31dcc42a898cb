"""Write examples/docs/evaluating-rag.pdf (a 3-page example document) with reportlab.

Run: .venv/bin/python examples/make_example_pdf.py  (the PDF is committed; rerun after editing PAGES)
"""

from __future__ import annotations

from pathlib import Path

PAGES = [
    ("Evaluating RAG, in-context learning and fine-tuning", [
        "An evaluation compares answering strategies on the same held-out questions. Each question has one "
        "or more gold answers, and, for retrieval, the passage that contains the answer.",
        "Answers are scored with exact match (EM), which is 1 when the normalised prediction equals a gold "
        "answer, and token F1, the harmonic mean of token precision and recall against the best gold answer. "
        "Normalisation lowercases the text and removes punctuation and articles.",
    ]),
    ("Measuring retrieval", [
        "Retrieval is measured separately from generation. Recall at k is the fraction of questions whose "
        "gold passage is among the top k retrieved chunks. Mean reciprocal rank (MRR) rewards finding the "
        "gold passage early, and nDCG discounts relevant results by their rank.",
        "A generator cannot answer from a passage it never sees, so recall at k bounds the quality of RAG "
        "answers. Hybrid search, which fuses BM25 and dense rankings with reciprocal rank fusion, often "
        "improves recall over either retriever alone.",
    ]),
    ("Reporting results", [
        "Differences between strategies are reported with bootstrap confidence intervals computed over "
        "questions: resample the questions with replacement many times and take the 2.5th and 97.5th "
        "percentiles of the metric. Two strategies whose intervals overlap widely are not clearly different.",
        "A report also lists latency per question and the cost of each strategy: indexing time for RAG, "
        "prompt length for few-shot prompting, and training time for fine-tuned adapters.",
    ]),
]


def main(out: Path = Path(__file__).parent / "docs" / "evaluating-rag.pdf") -> Path:
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.styles import getSampleStyleSheet
    from reportlab.platypus import PageBreak, Paragraph, SimpleDocTemplate, Spacer

    styles = getSampleStyleSheet()
    story = []
    for i, (heading, paragraphs) in enumerate(PAGES):
        if i:
            story.append(PageBreak())
        story.append(Paragraph(heading, styles["Heading1"]))
        for text in paragraphs:
            story += [Paragraph(text, styles["BodyText"]), Spacer(1, 8)]
    doc = SimpleDocTemplate(str(out), pagesize=A4, title="Evaluating RAG", author="ragtune", invariant=1)
    doc.build(story)
    return out


if __name__ == "__main__":
    print(main())
