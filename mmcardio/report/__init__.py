"""The report head: grounded, retrieval-augmented report drafts that know when to abstain.

labeller: findings stated in report text (EN/ZH, negation and uncertainty);
numbers: the measurements a sentence states; quality: inputs the head must not draft from;
model: a causal LM conditioned on CardioCLIP embeddings (prefix tokens), measurements and
retrieved reports; grounding: every sentence tied to its evidence, numbers and findings checked.
"""
