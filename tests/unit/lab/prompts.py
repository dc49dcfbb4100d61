"""Prompt templates of two clearly different difficulties, for tests that train a small router on the CLI."""

EASY = [
    "Say hello to my friend {}.",
    "What is a good name for a cat called {}?",
    "Translate 'thank you' for {}.",
    "Write a short birthday greeting for {}.",
    "Suggest a weekend activity for {}.",
]
HARD = [
    "Prove that the integral of x^{} from 0 to 1 equals 1/({}+1).",
    "Find all eigenvalues of the {}x{} matrix with ones on the diagonal.",
    "Show that every group of order {} squared is abelian.",
    "Compute the derivative of sin(x)^{} and simplify.",
    "Solve the recurrence a(n) = {} a(n-1) + 1.",
]
