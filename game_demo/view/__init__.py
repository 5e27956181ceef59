"""The pygame side: input to actions, text layout, drawing, and the application's frame loop."""
