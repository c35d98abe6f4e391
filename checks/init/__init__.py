"""`recipe-checks init`: propose a recipe that the traced estimate shows to fit a GPU.

`search` orders and traces the candidates; `recipe_text` writes a candidate as a commented recipe.
"""
