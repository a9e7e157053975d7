"""Message tags between the manager and a rank (named, so every send and receive can be matched).

Every WORK header is followed by WEIGHTS, X and Y; every rank given work answers with GRAD, then
LOSS ([loss, number of a stop signal it received or 0]). A STOP header is followed by nothing.
"""
HEADER, WEIGHTS, X, Y, GRAD, LOSS = 1, 2, 3, 4, 5, 6
