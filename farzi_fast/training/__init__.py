"""Training students on real or soft sequences, and the evaluation protocol every quality
number comes from: tasks (data + student + metric), `fit` (from scratch, checkpoint chosen on
validation), ranking metrics with full ranking."""

from .metrics import ranking_metrics, score_recommendations
from .protocol import VALIDATION, Recipe, fit, fit_and_test, popularity_summary
from .tasks import ARCHITECTURES, Task, language_task, load_task, recommendation_task
from .train import hard_loss, random_subset, soft_loss, train_student

__all__ = ["ARCHITECTURES", "VALIDATION", "Recipe", "Task", "fit", "fit_and_test", "hard_loss",
           "language_task", "load_task", "popularity_summary", "random_subset",
           "ranking_metrics", "recommendation_task", "score_recommendations", "soft_loss",
           "train_student"]
