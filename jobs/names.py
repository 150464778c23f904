"""Names of the shared entries the app registers itself (users can never take them: jobs.services.catalog),
declared once for the services that register them and the selectors that find them."""

# The real offline models' prompt splits and their gold reward (ml.offline installs them; names follow the
# models' manifest keys with dashes, see jobs.services.catalog.offline_model_name).
OFFLINE_TRAIN, OFFLINE_HELDOUT = "if-judge-train", "if-judge-heldout"
OFFLINE_GOLD = "if:judge"
OFFLINE_WEAK, OFFLINE_STRONG = "smollm2-135m-instruct", "gemma3-270m-base"
