"""The web page: upload a fundus photograph, see its grade, probabilities and heat map."""
