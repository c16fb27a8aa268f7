//! Evaluation of models: IFEval (`ifeval`), scored as Google's reference evaluator scores it.

pub mod ifeval;
